# checkseal: SD HEX... — recompute each layer's seal; print the layers whose content changed.
for hex in "$@"; do
  d="$SD/layers/$hex"
  [ -d "$d/diff" ] || { echo "$hex: missing"; continue; }
  want=$(cat -- "$d/seal" 2>/dev/null || :)
  seal digest "$d/diff"
  [ "$_h" = "$want" ] || echo "$hex: content changed (seal $_h, recorded ${want:-none})"
done
