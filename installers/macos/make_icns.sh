#!/usr/bin/env bash
# Ember.icns for the .app, from resources/icons/ember-<px>.png, with iconutil (macOS).
#   installers/macos/make_icns.sh            -> build/macos/Ember.icns (the spec picks it up)
#   ICONSET_ONLY=1 installers/macos/make_icns.sh  stops after the .iconset folder (any OS; tests use it)
# Environment: ICONS (PNG folder), OUT (output folder).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ICONS="${ICONS:-$ROOT/resources/icons}"
OUT="${OUT:-$ROOT/build/macos}"
SET="$OUT/Ember.iconset"
rm -rf "$SET"
mkdir -p "$SET"

# iconutil's names: icon_<points>x<points>[@2x].png, the @2x file has twice the pixels.
missing=()
put() {  # put NAME PIXELS
    local src="$ICONS/ember-$2.png"
    if [ -f "$src" ]; then cp "$src" "$SET/$1"; else missing+=("$1 (needs ember-$2.png)"); fi
}
put icon_16x16.png 16
put icon_16x16@2x.png 32
put icon_32x32.png 32
put icon_32x32@2x.png 64
put icon_128x128.png 128
put icon_128x128@2x.png 256
put icon_256x256.png 256
put icon_256x256@2x.png 512
put icon_512x512.png 512
put icon_512x512@2x.png 1024
if [ ${#missing[@]} -gt 0 ]; then
    # iconutil accepts an incomplete set; macOS scales the largest it has
    printf 'make_icns: left out %s\n' "${missing[@]}" >&2
fi
[ -f "$SET/icon_512x512.png" ] || { echo "make_icns: no 512 px icon in $ICONS" >&2; exit 1; }

if [ "${ICONSET_ONLY:-0}" = 1 ]; then
    echo "$SET"
    exit 0
fi
command -v iconutil >/dev/null || { echo "make_icns: iconutil runs on macOS only" >&2; exit 1; }
iconutil --convert icns --output "$OUT/Ember.icns" "$SET"
echo "$OUT/Ember.icns"
