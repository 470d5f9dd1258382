# ship: SD HEX SIZE — unpack the layer tar (overlay form) of SIZE bytes arriving on stdin as
# layer HEX. One pass, no copy of the tar on the host: the controller checks the sha256 as it
# streams and holds back the last bytes unless it matches, so a short stream means "do not
# store" (SSH's MAC already guards what does arrive).
store
hex=$1 size=$2
stage="$SD/staging/$hex.$$"
trap 'rm -rf -- "$stage"' EXIT
mkdir -m 700 -- "$stage"
mkdir -m 755 -- "$stage/diff"
mkfifo -m 600 -- "$stage/tee"
wc -c < "$stage/tee" > "$stage/count" &
# tar stops at the archive's end marker: drain the rest so that all of it is counted
tee -- "$stage/tee" | {
  tar -x --xattrs --xattrs-include='trusted.*' --xattrs-include='security.capability' --numeric-owner -p \
    -f - -C "$stage/diff"
  cat > /dev/null
}
wait "$!"
got=$(tr -d ' ' < "$stage/count")
[ "$got" = "$size" ] || fail "layer $hex: the stream ended after $got of $size bytes; nothing stored"
rm -f -- "$stage/tee" "$stage/count"
commit "$SD" "$stage" "$hex"
