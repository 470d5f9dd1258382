# Shared by lamina's host scripts (prepended to each). POSIX sh, coreutils, util-linux, GNU tar.
set -eu
fail() { printf 'lamina: %s\n' "$*" >&2; exit 1; }

# sha256 of stdin, 64 hex digits: OpenSSL's when the host has a working one (it uses the
# CPU's SHA instructions: 4x coreutils 9.1's sha256sum on 200 MiB here), else coreutils'.
if [ "$(printf '' | openssl dgst -sha256 -r 2>/dev/null | cut -c1-64)" = \
     e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 ]; then
  sha256() { openssl dgst -sha256 -r | cut -c1-64; }
else
  sha256() { sha256sum | cut -c1-64; }
fi

# The seal of a layer directory: sha256 of the tar that this host's GNU tar writes for it,
# sorted and without times other than mtime. Recomputed later, it proves the layer unchanged.
seal() {
  tar -C "$1" --sort=name --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --xattrs --xattrs-include=trusted.overlay.opaque -cf - . | sha256
}

# link SD HEX: make sure a short link l/NAME -> ../layers/HEX/diff exists; print NAME.
# Short names keep a 500-layer lowerdir= under one page (mounted from SD/l as cwd).
link() {
  _n=6
  while :; do
    _name=$(printf '%s' "$2" | cut -c1-$_n)
    if [ -L "$1/l/$_name" ]; then
      [ "$(readlink -- "$1/l/$_name")" = "../layers/$2/diff" ] && break
    elif [ ! -e "$1/l/$_name" ]; then
      ln -s -- "../layers/$2/diff" "$1/l/$_name" && break
    fi
    _n=$((_n + 1))
  done
  printf '%s\n' "$_name"
}

# commit SD STAGE HEX [SEAL]: STAGE/diff becomes layer HEX, atomically (a crash leaves
# only staging debris, never a half layer under its final name).
commit() {
  printf '%s\n' "${4:-$(seal "$2/diff")}" > "$2/seal"
  if mv -T -- "$2" "$1/layers/$3" 2>/dev/null; then :; else
    [ -d "$1/layers/$3/diff" ] || fail "cannot move layer $3 into place"
    rm -rf -- "$2"  # the same content arrived meanwhile
  fi
  printf 'LAYER %s %s\n' "$3" "$(link "$1" "$3")"
}

# The layer store's directories, root-only; and hold apply.busy shared while this script
# runs, so that the host's apply lock outlives it (lamina/lock.py).
# shellcheck disable=SC2174  # parents exist; -m is for these dirs
store() {
  mkdir -p -m 700 /run/lamina && exec 8>>/run/lamina/apply.busy && flock -s 8
  mkdir -p -m 700 -- "$SD" "$SD/layers" "$SD/l" "$SD/staging" "$SD/cache"
}

# Remove the leftovers of interrupted builds, detaching a build mount left in one first
# (rm must never walk into a mounted tree).
clean() {
  for _s in "$SD"/staging/*; do
    [ -e "$_s" ] || continue
    if [ -d "$_s/merged" ] && mountpoint -q "$_s/merged"; then umount -R -l "$_s/merged"; fi
    rm -rf --one-file-system -- "$_s"
  done
}
