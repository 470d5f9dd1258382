# ship: SD HEX SIZE — unpack the layer tar (overlay form) arriving on stdin as layer HEX. One pass,
# no copy of the tar on the host, nothing counted or copied beside tar. The controller pads
# the tar with zeros to a whole 10 KiB record, then sends the line "lamina-commit HEX" — only
# once the whole layer has matched its sha256 there (it holds the last bytes back until then;
# SSH's MAC guards what does arrive). GNU tar reads whole records and stops at the archive's
# end, so that line is what it leaves on stdin: a stream cut anywhere, even between two
# members (where tar exits 0), lacks it, and nothing is stored.
store
hex=$1 size=$2
stage="$SD/staging/$hex.$$"
trap '[ ! -e "$stage" ] || rm -rf -- "$stage"' EXIT  # committed, it is gone: no rm to run
mkdir -m 755 -- "$stage" "$stage/diff"  # one process; a stage that exists is an error (inside root-only staging/)
unset TAR_OPTIONS  # none of the host's defaults: -b 20 is the record size the controller pads to
tar -x -b 20 --xattrs --xattrs-include='trusted.*' --xattrs-include='security.capability' --numeric-owner -p \
  -f - -C "$stage/diff"
end=$(tr -d '\000')
[ "$end" = "lamina-commit $hex" ] || fail "layer $hex: the stream ended before the whole layer arrived; nothing stored"
# the seal: sha256sum for a small layer (its exec is cheaper than openssl's), else openssl
if [ "$size" -le 4194304 ]; then seal sha "$stage/diff"; else seal digest "$stage/diff"; fi
commit "$SD" "$stage" "$hex" "$_h"
