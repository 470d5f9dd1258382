# ship: SD HEX SHA256 — unpack the layer tar (overlay form) arriving on stdin as layer HEX,
# checking its sha256 while it streams (one pass, no copy of the tar on the host).
store
hex=$1 sum=$2
stage="$SD/staging/$hex.$$"
trap 'rm -rf -- "$stage"' EXIT
mkdir -m 700 -- "$stage"
mkdir -m 755 -- "$stage/diff"
mkfifo -m 600 -- "$stage/tee"
sha256sum < "$stage/tee" > "$stage/sum" &
# tar stops at the archive's end marker: drain the rest so that all of it is digested
tee -- "$stage/tee" | {
  tar -x --xattrs --xattrs-include='trusted.*' --xattrs-include='security.capability' --numeric-owner -p \
    -f - -C "$stage/diff"
  cat > /dev/null
}
wait "$!"
got=$(cut -c1-64 < "$stage/sum")
[ "$got" = "$sum" ] || fail "layer $hex: corrupt in transit (sha256 $got, want $sum)"
rm -f -- "$stage/tee" "$stage/sum"
commit "$SD" "$stage" "$hex"
