# quarantine: SD HEX... — move damaged layers out of the way (into staging, cleaned later)
# so that they can be shipped or built again under their names.
store
for hex in "$@"; do
  if [ -d "$SD/layers/$hex" ]; then
    mv -T -- "$SD/layers/$hex" "$SD/staging/damaged-$hex.$$" && printf 'STAGED %s\n' "damaged-$hex.$$"
  fi
done
