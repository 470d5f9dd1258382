# relink: SD HEX... — recreate missing short links of present layers.
store
for hex in "$@"; do printf 'LAYER %s %s\n' "$hex" "$(link "$SD" "$hex")"; done
