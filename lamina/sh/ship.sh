# ship: SD [HEX SHA256]... — unpack the uploaded layer tars SD/staging/HEX.tar (overlay form),
# each as layer HEX.
store
stage=
trap 'rm -rf -- "$stage"' EXIT
while [ "$#" -ge 2 ]; do
  hex=$1 sum=$2 tarball="$SD/staging/$1.tar"
  shift 2
  stage="$SD/staging/$hex.$$"
  got=$(sha256sum < "$tarball" | cut -c1-64)
  [ "$got" = "$sum" ] || fail "layer $hex: the upload is corrupt (sha256 $got, want $sum)"
  mkdir -m 700 -- "$stage"
  mkdir -m 755 -- "$stage/diff"
  tar -x --xattrs --xattrs-include='trusted.*' --xattrs-include='security.capability' --numeric-owner -p \
    -f "$tarball" -C "$stage/diff"
  rm -f -- "$tarball"
  commit "$SD" "$stage" "$hex"
done
