#!/usr/bin/env bash
# Refreshes the vendored wasi-threads conformance tests from upstream: the
# prebuilt `.wasm` programs and `.json` expectations under
# tests/proposals/wasi-threads/ of WebAssembly/wasi-testsuite (branch
# prod/testsuite-all), with the suite's LICENSE and the commit they came
# from (SOURCE_COMMIT). Needs git and network access.
#
#   tests/wasi-testsuite/refresh.sh [REF]     # REF: branch, tag or commit
#
# Then run `cargo test -p wasi-threads-cli --test corpus`: a new or removed
# test module must also be added to or removed from tests/corpus.rs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ref="${1:-prod/testsuite-all}"
url="${WASI_TESTSUITE_URL:-https://github.com/WebAssembly/wasi-testsuite}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

git -C "$tmp" init -q suite
git -C "$tmp/suite" remote add origin "$url"
git -C "$tmp/suite" fetch -q --depth 1 origin "$ref"
git -C "$tmp/suite" checkout -q FETCH_HEAD
src="$tmp/suite/tests/proposals/wasi-threads"
[ -d "$src" ] || { echo "$ref has no tests/proposals/wasi-threads/" >&2; exit 1; }

rm -f "$here"/*.wasm "$here"/*.json
cp "$src"/*.wasm "$here"/
cp "$src"/*.json "$here"/ 2>/dev/null || true
for license in LICENSE LICENSE.md LICENSE-APACHE; do
  if [ -f "$tmp/suite/$license" ]; then
    cp "$tmp/suite/$license" "$here/LICENSE"
    break
  fi
done
git -C "$tmp/suite" rev-parse HEAD >"$here/SOURCE_COMMIT"
echo "wasi-testsuite $(cat "$here/SOURCE_COMMIT"): $(ls "$here"/*.wasm | wc -l) modules in $here"
