#!/usr/bin/env bash
# Ember-VERSION-macos-ARCH.dmg from dist/Ember.app with hdiutil (macOS): the app and an
# Applications link to drag it onto. Signs the image when EMBER_CODESIGN_IDENTITY is set.
# Environment: APP (default dist/Ember.app), OUT (the .dmg path).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VERSION="$(cd "$ROOT" && python3 -c 'from installers.version import project_version; print(project_version())')"
APP="${APP:-$ROOT/dist/Ember.app}"
OUT="${OUT:-$ROOT/dist/Ember-$VERSION-macos-$(uname -m).dmg}"
[ -d "$APP" ] || { echo "make_dmg: no $APP; build it first (installers/macos/build.sh)" >&2; exit 1; }
command -v hdiutil >/dev/null || { echo "make_dmg: hdiutil runs on macOS only" >&2; exit 1; }

plist_version="$(/usr/libexec/PlistBuddy -c 'Print :CFBundleShortVersionString' "$APP/Contents/Info.plist")"
if [ "$plist_version" != "$VERSION" ]; then
    echo "make_dmg: $APP is version $plist_version, pyproject.toml says $VERSION: rebuild the app" >&2
    exit 1
fi

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
ditto "$APP" "$STAGE/Ember.app"   # ditto keeps symlinks, extended attributes and signatures
ln -s /Applications "$STAGE/Applications"
rm -f "$OUT"
hdiutil create -volname "Ember $VERSION" -srcfolder "$STAGE" -fs HFS+ -format UDZO -ov "$OUT"
if [ -n "${EMBER_CODESIGN_IDENTITY:-}" ]; then
    codesign --force --timestamp --sign "$EMBER_CODESIGN_IDENTITY" "$OUT"
fi
echo "$OUT"
