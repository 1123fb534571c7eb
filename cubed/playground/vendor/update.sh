#!/bin/sh
# Vendor chart.js's single-file build from the npm registry: ./update.sh VERSION
set -eu
version=${1:?usage: ./update.sh VERSION (e.g. 4.6.1)}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "chart.js@$version" >/dev/null
expected=$(npm view "chart.js@$version" dist.integrity)
actual="sha512-$(openssl dgst -sha512 -binary "chart.js-$version.tgz" | base64 -w0)"
[ "$expected" = "$actual" ] || { echo "integrity mismatch: $actual != $expected" >&2; exit 1; }
tar xzf "chart.js-$version.tgz"
color=$(sed -n 's/^ \* @kurkle\/color v\([0-9.]*\)$/\1/p' package/dist/chart.umd.min.js | head -n 1)
npm pack --silent "@kurkle/color@$color" >/dev/null
mkdir color && tar xzf "kurkle-color-$color.tgz" -C color
cp package/dist/chart.umd.min.js "$here/chart.umd.min.js"
cp package/LICENSE.md "$here/LICENSE.chart.js.md"
cp color/package/LICENSE.md "$here/LICENSE.kurkle-color.md"
echo "chart.js $version (with @kurkle/color $color): $expected"
sha256sum "$here/chart.umd.min.js"
