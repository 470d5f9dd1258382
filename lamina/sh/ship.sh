# ship: SD HEX SHA256 TARBALL — unpack an uploaded layer tar (overlay form) as layer HEX.
hex=$1 sum=$2 tarball=$3
store
stage="$SD/staging/$hex.$$"
trap 'rm -rf -- "$stage" "$tarball"' EXIT
got=$(sha256sum < "$tarball" | cut -c1-64)
[ "$got" = "$sum" ] || fail "layer $hex: the upload is corrupt (sha256 $got, want $sum)"
mkdir -m 700 -- "$stage"
mkdir -m 755 -- "$stage/diff"
tar -x --xattrs --xattrs-include='trusted.*' --xattrs-include='security.capability' --numeric-owner -p -f "$tarball" -C "$stage/diff"
commit "$SD" "$stage" "$hex"
