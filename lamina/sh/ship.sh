# ship: SD HEX SIZE [HEX SIZE]... — unpack layer tars (overlay form) arriving one after another
# on stdin as layers HEX, in one session. One pass, no copy of a tar on the host, nothing
# counted or copied beside tar. After each tar the controller sends zeros to a whole 10 KiB
# record, then the line "lamina-commit HEX" — only once that whole layer has matched its
# sha256 there (it holds the last bytes back until then; SSH's MAC guards what does arrive).
# GNU tar reads whole records and stops at the archive's end, so that line is what it leaves
# on stdin; `read` takes it a byte at a time (as POSIX asks of it on a pipe), leaving the next
# layer's tar untouched. A stream cut anywhere, even between two members (where tar exits 0),
# lacks the line, and that layer is not stored.
store
unset TAR_OPTIONS  # none of the host's defaults: -b 20 is the record size the controller pads to
# Every layer's stage at once: one mkdir (a stage that exists is an error, inside root-only
# staging/). A committed stage is gone; the EXIT trap removes those left, with one rm.
cd -- "$SD/staging"
stages= i=0
for a do i=$((i + 1)); [ $((i % 2)) = 0 ] || stages="$stages $a.$$ $a.$$/diff"; done
# shellcheck disable=SC2086  # hex names and a pid: split on purpose
trap 'set --; for s in $stages; do [ ! -e "$SD/staging/$s" ] || set -- "$@" "$SD/staging/$s"; done
  [ "$#" = 0 ] || rm -rf -- "$@"' EXIT
# shellcheck disable=SC2086
mkdir -m 755 -- $stages
while [ "$#" -ge 2 ]; do
  hex=$1 size=$2
  shift 2
  stage="$SD/staging/$hex.$$"
  tar -x -b 20 --xattrs --xattrs-include='trusted.*' --xattrs-include='security.capability' --numeric-owner -p \
    -f - -C "$stage/diff"
  end=
  IFS= read -r end || :
  [ "$end" = "lamina-commit $hex" ] || fail "layer $hex: the stream ended before the whole layer arrived; nothing stored"
  # the seal: sha256sum for a small layer (its exec is cheaper than openssl's), else openssl
  if [ "$size" -le 4194304 ]; then seal sha "$stage/diff"; else seal digest "$stage/diff"; fi
  commit "$SD" "$stage" "$hex" "$_h"
done
