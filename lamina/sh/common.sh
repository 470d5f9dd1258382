# Shared by lamina's host scripts (prepended to each). POSIX sh, coreutils, util-linux, GNU tar.
set -eu
fail() { printf 'lamina: %s\n' "$*" >&2; exit 1; }

# digest CMD...: the sha256 of what CMD writes, 64 hex digits, left in $_h (callers need no
# subshell of their own). OpenSSL's (it uses the CPU's SHA instructions: 4x coreutils 9.1's
# sha256sum on 200 MiB here); where the host has no working openssl, CMD runs again into
# coreutils' sha256sum. No probe up front: an exec of openssl costs ~7 ms, and most scripts
# hash nothing.
digest() {
  _h=$("$@" | openssl dgst -sha256 -r 2>/dev/null) || _h=
  _h=${_h%% *}
  case $_h in *[!0-9a-f]*) _h= ;; esac
  [ "${#_h}" = 64 ] || sha "$@"
}

# sha CMD...: the same with coreutils' sha256sum alone, whose exec costs a quarter of
# openssl's: for small data.
sha() {
  _h=$("$@" | sha256sum) || fail "cannot compute a sha256"
  _h=${_h%% *}
}

# seal HASH DIR: the seal of a layer directory (HASH: digest or sha, the same sha256 either
# way), in $_h: the sha256 of the tar that this host's GNU tar writes for it, sorted and
# without times other than mtime. Recomputed later, it proves the layer unchanged.
seal() {
  "$1" tar -C "$2" --sort=name --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --xattrs --xattrs-include=trusted.overlay.opaque -cf - .
}

# link SD HEX: make sure a short link l/NAME -> ../layers/HEX/diff exists; NAME is left in
# $_name (no subshell, no cut: a first converge runs this for every layer). Short names keep
# a 500-layer lowerdir= under one page (mounted from SD/l as cwd).
link() {
  _q=??????
  while :; do
    _rest=${2#$_q}
    _name=${2%"$_rest"}
    if [ -L "$1/l/$_name" ]; then
      [ "$(readlink -- "$1/l/$_name")" = "../layers/$2/diff" ] && break
    elif [ ! -e "$1/l/$_name" ]; then
      ln -s -- "../layers/$2/diff" "$1/l/$_name" && break
    fi
    _q="$_q?"
  done
}

# commit SD STAGE HEX SEAL: STAGE/diff becomes layer HEX, atomically (a crash leaves
# only staging debris, never a half layer under its final name).
commit() {
  printf '%s\n' "$4" > "$2/seal"
  if mv -T -- "$2" "$1/layers/$3" 2>/dev/null; then :; else
    [ -d "$1/layers/$3/diff" ] || fail "cannot move layer $3 into place"
    rm -rf -- "$2"  # the same content arrived meanwhile
  fi
  link "$1" "$3"
  printf 'LAYER %s %s\n' "$3" "$_name"
}

# The layer store's directories, root-only; and hold apply.busy shared while this script
# runs, so that the host's apply lock outlives it — unless the shell that holds the lock runs
# it (`busy`: lamina/lock.py BUSY, defined ahead of this file by materialize._script).
# shellcheck disable=SC2174  # parents exist; -m is for these dirs
store() {
  busy
  [ -d "$SD/layers" ] && [ -d "$SD/l" ] && [ -d "$SD/staging" ] && [ -d "$SD/cache" ] ||
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
