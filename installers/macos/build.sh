#!/usr/bin/env bash
# Ember.app and its .dmg on a Mac: icon, PyInstaller bundle, signature, disk image, notarization.
#   installers/macos/build.sh
# Environment (all optional; see installers/macos/README.md):
#   EMBER_CODESIGN_IDENTITY  "Developer ID Application: Name (TEAMID)": sign with the hardened runtime
#   EMBER_NOTARY_PROFILE     a `xcrun notarytool store-credentials` profile: notarize and staple the .dmg
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
[ "$(uname)" = Darwin ] || { echo "build.sh: run this on macOS (14 or newer)" >&2; exit 1; }

installers/macos/make_icns.sh
"$PY" -m installers.build bundle          # the spec's BUNDLE step writes dist/Ember.app
plutil -lint dist/Ember.app/Contents/Info.plist

if [ -n "${EMBER_CODESIGN_IDENTITY:-}" ]; then
    # inside out: every library and the executable, then the bundle (no --deep)
    find dist/Ember.app/Contents -type f \( -name '*.so' -o -name '*.dylib' -o -perm -u+x \) -print0 |
        xargs -0 codesign --force --options runtime --timestamp \
            --entitlements installers/macos/entitlements.plist --sign "$EMBER_CODESIGN_IDENTITY"
    codesign --force --options runtime --timestamp --entitlements installers/macos/entitlements.plist \
        --sign "$EMBER_CODESIGN_IDENTITY" dist/Ember.app
    codesign --verify --strict --verbose=2 dist/Ember.app
fi

DMG="$(installers/macos/make_dmg.sh | tail -n 1)"

if [ -n "${EMBER_NOTARY_PROFILE:-}" ]; then
    xcrun notarytool submit "$DMG" --keychain-profile "$EMBER_NOTARY_PROFILE" --wait
    xcrun stapler staple "$DMG"
    spctl --assess --type open --context context:primary-signature --verbose "$DMG"
fi
echo "$DMG"
