#!/usr/bin/env bash
# /run latency and throughput for count_vowels over HTTP, traced and untraced, side by side on
# one server (wrk, from Debian). Usage: scripts/bench-load.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-16}
if ! command -v wrk >/dev/null; then
  apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet --bin iota
bin="${CARGO_TARGET_DIR:-target}/release/iota"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" serve --addr 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/out")
curl -sf -F wasm=@fixtures/wasm/count_vowels.wasm "$url/upload?name=traced" >/dev/null
curl -sf -F wasm=@fixtures/wasm/count_vowels.wasm "$url/upload?name=untraced&instrument=false" >/dev/null
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "Hello, world!"
LUA
echo "machine: $(nproc) cores; wrk -t2 -c$connections -d${seconds}s; server and wrk share the machine"
printf '%-9s %10s %9s %9s %9s\n' mode req/s p50 p99 errors
for round in 1 2; do
  for mode in untraced traced; do
    out=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$work/post.lua" "$url/run?name=$mode")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    printf '%-9s %10s %9s %9s %9s   (round %d)\n' "$mode" "$rps" "$p50" "$p99" "${errors:-0}" "$round"
  done
done
curl -s "$url/metrics" | grep -E '^iota_(runs|run_failures)_total'
