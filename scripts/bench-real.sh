#!/usr/bin/env bash
# Overhead of tracing on real programs, side by side on one server (BENCHMARKS.md reports it):
# CPython 3.12 on four scripts (recursion, JSON, strings, classes), yosys synthesizing a small
# design, boolector factoring a 34-bit number, and count_vowels. Each program is uploaded four
# times: untraced (instrument=false), every call timed, short calls counted by the static cost
# model, and the defaults (counted, then learned from the first runs). After warm-up runs (and
# the re-instrumentation they teach) the four run ROUNDS times in alternation, and the medians
# of the runs' own durations (their run spans) are compared.
# Usage: scripts/bench-real.sh [ROUNDS] (default 5). Fetches yosys and CPython from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
inputs=scripts/bench-real
wasm=target/real-wasm
scripts/fetch-real-wasm.sh --with-yosys --with-cpython "$wasm" >/dev/null
bin=${IOTA_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin iota
  bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/iota"
fi
work=$(mktemp -d)
"$bin" serve --addr 127.0.0.1:0 --data-dir "$work/data" --run-timeout-ms 120000 \
  --compile-timeout-ms 600000 >"$work/out" 2>"$work/err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 600); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.05; done
url=$(grep -o 'http://[0-9.:]*' "$work/out")
echo "machine: $(nproc) cores; $(date -u +%F); release build; $rounds rounds"

# upload NAME FILE QUERY: four versions side by side: NAME-plain (instrument=false: no hooks),
# NAME-every (every call timed, as before short calls were counted), NAME-static (the cost
# model's counting alone, learn=false) and NAME (the defaults: counting, then learning).
upload() {
  curl -sf -F "wasm=@$2" "$url/upload?name=$1-plain&instrument=false$3" >/dev/null
  curl -sf -F "wasm=@$2" "$url/upload?name=$1-every&timing=every_call&learn=false$3" >/dev/null
  curl -sf -F "wasm=@$2" "$url/upload?name=$1-static&learn=false$3" >/dev/null
  curl -sf -F "wasm=@$2" "$url/upload?name=$1$3" >/dev/null
}
upload py "$wasm/python-3.12.0.wasm" "&unknown_imports=trap"
upload yosys "$wasm/yosys.wasm" "&unknown_imports=trap"
upload boolector "$wasm/boolector.wasm" ""
upload count_vowels fixtures/wasm/count_vowels.wasm ""

# The programs: label, module, query (args), stdin.
programs=(
  "cpython-recursion py &arg=- $inputs/recursion.py"
  "cpython-json py &arg=- $inputs/json_roundtrip.py"
  "cpython-strings py &arg=- $inputs/strings.py"
  "cpython-classes py &arg=- $inputs/classes.py"
  "yosys yosys &arg=-q $inputs/synth.ys"
  "boolector boolector &arg=--smt2&arg=-m $inputs/factor.smt2"
  "count_vowels count_vowels & fixtures/rust/count_vowels.rs"
)

# run MODULE QUERY STDIN: prints the run span's duration (s) and the calls it counted.
run() {
  local headers trace_id
  headers=$(curl -s -D - -o /dev/null -X POST --data-binary "@$3" "$url/run?name=$1$2")
  trace_id=$(awk 'tolower($1) == "x-iota-trace-id:" {print $2}' <<<"$headers" | tr -d '\r')
  curl -sf "$url/traces/$trace_id" | python3 -c '
import json, sys
t = json.load(sys.stdin)
run = t["spans"][1]["attributes"]
print(t["spans"][1]["duration_ns"] / 1e9, run.get("iota.calls.total", 0), run.get("iota.calls.counted", 0))'
}

# warm_round: one run of every program in each of its versions.
warm_round() {
  for p in "${programs[@]}"; do
    read -r _ module query stdin <<<"$p"
    for variant in "$module" "$module-plain" "$module-every" "$module-static"; do
      run "$variant" "$query" "$stdin" >/dev/null
    done
  done
}
# learned_state: every traced module's generation and learning state, on one line.
learned_state() {
  for module in py yosys boolector count_vowels; do
    curl -sf "$url/modules/$module" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["generation"], m["learning"], end=" ")'
  done
}
# Warm-up: three rounds of every program (the traced versions learn from them: the server
# watches a version's first three runs by default). A learned version keeps watching what it
# times and may learn more: more rounds, each after the re-instrumented versions serve, until
# one round changes no version (at most ten).
for _ in 1 2 3; do warm_round; done
before=
for _ in $(seq 10); do
  for _ in $(seq 1200); do
    state=$(learned_state)
    [[ $state == *re-instrumenting* ]] || break
    sleep 0.5
  done
  [ "$state" = "$before" ] && break
  before=$state
  warm_round
done
for module in py yosys boolector count_vowels; do
  curl -sf "$url/modules/$module" | python3 -c '
import json, sys
m = json.load(sys.stdin)
print("%s: generation %d, %s, %d functions, %d counted (%d learned from its runs)" % (m["name"], m["generation"], m["learning"], m["functions"], m["counted_functions"], m["learned_functions"]))'
done

printf '\n| program | untraced | every call timed | static counting | + learned (default) | calls per run | counted (default) |\n|---|---|---|---|---|---|---|\n'
for p in "${programs[@]}"; do
  read -r label module query stdin <<<"$p"
  times=()
  for _ in $(seq "$rounds"); do
    for variant in plain every static default; do
      name=$module-$variant
      [ $variant = default ] && name=$module
      read -r seconds calls counted < <(run "$name" "$query" "$stdin")
      times+=("$variant=$seconds")
    done
  done
  python3 - "$label" "$calls" "$counted" "${times[@]}" <<'PY'
import statistics, sys
label, calls, counted = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = {}
for item in sys.argv[4:]:
    variant, seconds = item.split("=")
    runs.setdefault(variant, []).append(float(seconds))
median = {v: statistics.median(t) for v, t in runs.items()}
plain = median["plain"]
cells = [f"{plain * 1e3:.1f} ms"] + [
    f"{median[v] * 1e3:.1f} ms ({median[v] / plain:.2f}×)" for v in ("every", "static", "default")
]
share = f"{100 * counted / calls:.0f} %" if calls else "-"
print(f"| {label} | {' | '.join(cells)} | {calls:,} | {share} |")
PY
done
