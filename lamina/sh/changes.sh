# changes: SD MERGED NLOWER LOWER... -- PATH... — for `lamina diff`: mount the image's view
# read-only (LOWER: short link names, highest first) and print, for each PATH (relative,
# from the container's upper dir), its stat in the container's view ("new") and in the
# image's ("old"); for each PATH ending in "/" (an opaque dir) also the names it holds
# in the image.
merged=$1 n=$2
shift 2
lower=
while [ "$n" -gt 0 ]; do lower="${lower:+$lower:}$1"; shift; n=$((n - 1)); done
[ "$1" = -- ] && shift
old="$SD/staging/diff.$$"
trap 'umount -- "$old" 2>/dev/null; rmdir -- "$old" 2>/dev/null' EXIT
# shellcheck disable=SC2174
mkdir -p -m 700 -- "$SD/staging"
mkdir -- "$old"
case "$lower" in
  *:*) (cd "$SD/l" && mount -t overlay -o "ro,lowerdir=$lower" lamina-diff "$old") ;;
  *) mount --bind -o ro -- "$SD/l/$lower" "$old" ;;
esac
fmt='\t%f\t%u\t%g\t%t:%T\t%s\t%.9Y\n'
for p in "$@"; do
  case "$p" in */) d=${p%/}; echo "@@children $d"; ls -A -- "$old/$d" 2>/dev/null || : ;; esac
done
for p in "$@"; do
  p=${p%/}
  echo "@@path $p"
  stat --printf "new$fmt" -- "$merged/$p" 2>/dev/null || :
  stat --printf "old$fmt" -- "$old/$p" 2>/dev/null || :
done
