#!/usr/bin/env bash
# Vendors the web view's chart library into worker/web/vendor/: TradingView's
# lightweight-charts (Apache-2.0) at a pinned version, fetched with
# `npm pack` from the npm registry, checked against the registry's
# integrity hash, and copied as its standalone production build with its
# LICENSE and NOTICE. The result is committed and embedded in the worker
# binary (include_str!), so the web view needs no internet at run time and
# loads nothing from a CDN. Run it again only to change the version.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${LIGHTWEIGHT_CHARTS_VERSION:-5.2.1}"
DEST=worker/web/vendor

command -v npm >/dev/null || { echo "vendor-web-assets.sh: npm is needed" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "lightweight-charts@$VERSION" >/dev/null)
tarball="$(ls "$tmp"/lightweight-charts-*.tgz)"
want="$(npm view "lightweight-charts@$VERSION" dist.integrity)"
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
[ "$want" = "$got" ] || { echo "integrity mismatch: registry $want, tarball $got" >&2; exit 1; }
tar -xzf "$tarball" -C "$tmp"

mkdir -p "$DEST"
cp "$tmp/package/dist/lightweight-charts.standalone.production.js" "$DEST/lightweight-charts.standalone.production.js"
cp "$tmp/package/LICENSE" "$DEST/LICENSE"
if [ -f "$tmp/package/NOTICE" ]; then cp "$tmp/package/NOTICE" "$DEST/NOTICE"; fi
printf 'lightweight-charts %s\nfrom the npm registry (npm pack), integrity %s\nby scripts/vendor-web-assets.sh\n' \
  "$VERSION" "$want" >"$DEST/VERSION"
ls -l "$DEST"
