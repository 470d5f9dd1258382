# relink: SD HEX... — recreate missing short links of present layers.
store
for hex in "$@"; do link "$SD" "$hex" && printf 'LAYER %s %s\n' "$hex" "$_name"; done
