# run: SD KEY SCRIPT NENV ENV... LOWER... — run SCRIPT with /bin/sh in a chroot of the
# lowers (short link names, highest first); what it changes becomes a layer, recorded
# in the build cache under KEY.
key=$1 script=$2 nenv=$3
store
shift 3
i=0 envs=""
while [ "$i" -lt "$nenv" ]; do envs="$envs$1
"; shift; i=$((i + 1)); done
stage="$SD/staging/run-$key.$$"
m="$stage/merged"
mounted=
# On failure: detach the build's mounts (-R: all four at once), then drop the stage; rm
# stays on the stage's filesystem whatever happens, never walking into a mount.
cleanup() {
  if [ -n "$mounted" ]; then umount -R -- "$m" 2>/dev/null || umount -R -l -- "$m" 2>/dev/null || :; fi
  [ ! -e "$stage" ] || rm -rf --one-file-system -- "$stage"
}
trap cleanup EXIT
# Mount points for /dev and /proc live in a layer of their own under the upper dir,
# so they never land in the step's layer (Docker's "init layer").
# shellcheck disable=SC2174
[ -d "$SD/init/proc" ] && [ -d "$SD/init/dev" ] || mkdir -p -m 755 -- "$SD/init/dev" "$SD/init/proc"
mkdir -m 755 -- "$stage" "$stage/diff" "$stage/work" "$m"  # one process; a stage that exists is an error (inside root-only staging/)
lower=../init
for name in "$@"; do lower="$lower:$name"; done
(cd "$SD/l" && mount -t overlay -o "lowerdir=$lower,upperdir=$stage/diff,workdir=$stage/work,index=off,redirect_dir=off,metacopy=off" lamina-build "$m") \
  || fail "cannot mount the build overlay for step $key"
mounted=1
mount -t tmpfs -o mode=755,size=1m lamina-dev "$m/dev"
mknod -m 666 "$m/dev/null" c 1 3 && mknod -m 666 "$m/dev/zero" c 1 5
mknod -m 666 "$m/dev/full" c 1 7 && mknod -m 666 "$m/dev/random" c 1 8
mknod -m 666 "$m/dev/urandom" c 1 9 && mknod -m 666 "$m/dev/tty" c 5 0
mount -t proc proc "$m/proc"
mount -o bind,ro -- "$m/proc/sys" "$m/proc/sys"  # one mount(8): util-linux >= 2.27 remounts it read-only
[ -x "$m/bin/sh" ] || [ -L "$m/bin/sh" ] || fail "step $key: the image has no /bin/sh to run the step with"
status=0
# $envs splits on newlines only (IFS): one NAME=VALUE per line
# shellcheck disable=SC2086
(IFS='
'; set -f; exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root $envs \
  chroot "$m" /bin/sh -c "$script") || status=$?
umount -R -- "$m"
mounted=
[ "$status" = 0 ] || fail "run step failed with exit code $status"
rm -rf -- "$stage/work" "$m"
# a run layer is named by its seal: content-addressed on this host. sha256sum: an exec of
# openssl costs more than hashing a typical step's layer, and a step that writes much takes
# far longer than hashing it
seal sha "$stage/diff"
hex=$_h
commit "$SD" "$stage" "$hex" "$hex"
# no temporary and mv: a torn record is no 64-digit name of a stored layer, and the step is built again
printf '%s\n' "$hex" > "$SD/cache/$key"
