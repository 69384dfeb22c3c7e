#!/usr/bin/env bash
# The server's figures, side by side on one machine (BENCHMARKS.md reports them):
#   p3    /run of count_vowels over HTTP with wrk, traced and untraced, in rounds alternating
#         (P3_ROUNDS, default 8, of P3_SECS, default 5, seconds per mode), with their ratios and
#         the median
#   p4    one run of fib(33), 11.4M calls: time traced and untraced, trace memory, peak RSS
#   p5    restart with 100 stored modules: time until the server listens, against a first start
#   soak  60 s of /run at saturation: errors, latency percentiles, RSS every 5 s
#   chaos good runs alone for 60 s, then 60 s of good runs among sleepers, hang-ups, traps,
#         stdout floods, memory bombs and re-uploads (scripts/chaos.py): success rate, p99, RSS
#         and disk every 10 s
#   storm count_vowels p99 alone, then while yosys.wasm is uploaded in a loop (needs
#         scripts/fetch-real-wasm.sh --with-yosys)
#   components  requests to the wasi:http handler component (POST /NAME/vowels) and /run of
#         count_vowels as a command component, traced and untraced, rounds alternating
#   trace the cost of host-call spans (100,000 WASI calls, timed and not) and of a sampled
#         run against an unsampled one (fib(33), 11.4M calls), rounds alternating
#   fleet servers on a shared S3 store (SeaweedFS on loopback, scripts/install-seaweedfs.sh):
#         time from an upload on A to the first successful run on B; a new server's start with
#         100 modules in the store (artifacts fetched), against a restart with a warm cache, a
#         data directory, and one that must compile them (and yosys.wasm among them, if
#         scripts/fetch-real-wasm.sh --with-yosys fetched it); /run on a server with the S3
#         store against one with the data directory, rounds alternating
# Usage: scripts/bench-server.sh [p3|p4|p5|soak|chaos|storm|trace|components|fleet|all] (default
# all: all but storm and fleet).
# wrk comes from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
if ! command -v wrk >/dev/null; then
  apt-get install -y -qq wrk >/dev/null
fi
# IOTA_BIN runs another build (an older one, to compare) instead of this checkout's.
bin=${IOTA_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin iota
  bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/iota"
fi
work=$(mktemp -d)
pid=
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi; }
# Servers and the store of `fleet`, stopped on exit.
others=()
stop_others() { for p in "${others[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; others=(); }
trap 'stop; stop_others; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F)"

# start DATA_DIR [flags...]: starts the server; sets $pid, $url and $ready (seconds until it
# listened).
start() {
  local data=$1
  shift
  local t0
  t0=$(date +%s.%N)
  "$bin" serve --addr 127.0.0.1:0 --data-dir "$data" "$@" >"$work/out" 2>"$work/err" &
  pid=$!
  for _ in $(seq 600); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.005; done
  url=$(grep listening "$work/out" | grep -o 'http://[0-9.:]*')
  ready=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.3f}')")
}
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
peak_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
upload() { curl -sf -F "wasm=@$2" "$url/upload?name=$1$3" >/dev/null; }
upload_to() { curl -sf -F "wasm=@$3" "$1/upload?name=$2" >/dev/null; }
printf 'wrk.method = "POST"\nwrk.body = "Hello, world!"\n' >"$work/post.lua"

# Server CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

# wrk_line MODE SECONDS CONNECTIONS [PATH]: one measurement as a table row, with the server's
# CPU time per request (steadier than req/s when wrk shares the cores). PATH defaults to
# /run?name=MODE.
wrk_line() {
  local out rps p50 p99 errors c0 c1 requests
  c0=$(cpu_ticks)
  out=$(wrk -t2 -c"$3" -d"$2s" --latency -s "$work/post.lua" "$url${4:-/run?name=$1}")
  c1=$(cpu_ticks)
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {n += $5} /Socket errors/ {n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out" | tr -d ',')
  printf '%-17s %10s %9s %9s %7s %12s' "$1" "$rps" "$p50" "$p99" "$errors" \
    "$(python3 -c "print(f'{($c1 - $c0) / $(getconf CLK_TCK) * 1e6 / $requests:.1f}')")"
}

p3() {
  local rounds=${P3_ROUNDS:-8} secs=${P3_SECS:-5}
  echo "## P3: /run count_vowels, wrk -t2 -c16, $rounds rounds of $secs s per mode, the order alternating, server and wrk on the same cores"
  start "$work/p3"
  upload traced fixtures/wasm/count_vowels.wasm ""
  upload untraced fixtures/wasm/count_vowels.wasm "&instrument=false"
  # Warm both (the traced upload learns its short calls in its first runs).
  wrk_line untraced 3 16 >/dev/null
  wrk_line traced 3 16 >/dev/null
  printf '%-9s %10s %9s %9s %7s %12s\n' mode req/s p50 p99 errors 'cpu µs/req'
  local untraced traced ratios=()
  for round in $(seq "$rounds"); do
    if ((round % 2)); then
      untraced=$(wrk_line untraced "$secs" 16)
      traced=$(wrk_line traced "$secs" 16)
    else
      traced=$(wrk_line traced "$secs" 16)
      untraced=$(wrk_line untraced "$secs" 16)
    fi
    echo "$untraced   (round $round)"
    echo "$traced   (round $round)"
    ratios+=("$(awk -v u="$untraced" -v t="$traced" 'BEGIN {split(u, a, " +"); split(t, b, " +"); printf "%.3f %.3f", b[2] / a[2], a[6] / b[6]}')")
    echo "traced/untraced: $(awk '{printf "%.2f× req/s, %.2f× requests per CPU second", $1, $2}' <<<"${ratios[-1]}")"
  done
  printf '%s\n' "${ratios[@]}" | python3 -c '
import statistics, sys
rows = [tuple(map(float, line.split())) for line in sys.stdin]
for name, values in (("req/s", [r[0] for r in rows]), ("requests per CPU second", [r[1] for r in rows])):
    print(f"traced/untraced over {len(rows)} rounds, {name}: median {statistics.median(values):.2f}×, "
          f"{min(values):.2f}–{max(values):.2f}×, at least 0.9× in {sum(v >= 0.9 for v in values)}")'
  curl -s "$url/metrics" | awk '$1 == "iota_runs_total" {t = $2} $1 == "iota_runs_inline_total" {i = $2}
    $1 == "iota_runs_moved_total" {m = $2} END {printf "runs: %d, started and ended on the HTTP side %d, moved to the run threads %d\n", t, i, m}'
  stop
}

p4() {
  echo "## P4: one run of fib(33): 11,405,773 calls"
  start "$work/p4"
  upload fib fixtures/wasm/fib.wasm ""
  upload fib-untraced fixtures/wasm/fib.wasm "&instrument=false"
  local before t0 t1 headers trace_id
  curl -sf -X POST --data 33 "$url/run?name=fib-untraced" >/dev/null
  before=$(peak_mib)
  t0=$(date +%s.%N)
  curl -sf -X POST --data 33 "$url/run?name=fib-untraced" >/dev/null
  t1=$(date +%s.%N)
  echo "untraced run: $(python3 -c "print(f'{$t1 - $t0:.3f}')") s"
  t0=$(date +%s.%N)
  headers=$(curl -sf -D - -o /dev/null -X POST --data 33 "$url/run?name=fib")
  t1=$(date +%s.%N)
  trace_id=$(awk 'tolower($1) == "x-iota-trace-id:" {print $2}' <<<"$headers" | tr -d '\r')
  echo "traced run:   $(python3 -c "print(f'{$t1 - $t0:.3f}')") s"
  echo "server peak RSS: $before MiB before the traced run, $(peak_mib) MiB after"
  curl -sf "$url/traces/$trace_id" | python3 -c '
import json, sys
t = json.load(sys.stdin)
run = t["spans"][1]["attributes"]
fib = next(f for f in t["functions"] if "fib::fib" in f["name"])
mib = run["iota.recorder.bytes"] / 2**20
total, logged, short = run["iota.calls.total"], run["iota.calls.recorded"], run["iota.calls.short"]
floor, spans = run["iota.span.min_ns"], run["iota.spans.exported"]
print(f"recorder memory: {mib:.1f} MiB; calls total {total:,}, logged {logged:,}, below the minimum {short:,}; "
      f"minimum span raised to {floor:,} ns; spans exported {spans:,}")
calls, total_s, self_s = fib["calls"], fib["total_ns"] / 1e9, fib["self_ns"] / 1e9
print(f"fib::fib: {calls:,} calls, total {total_s:.3f} s, self {self_s:.3f} s")'
  stop
}

p5() {
  echo "## P5: restart with 100 stored modules"
  start "$work/p5"
  echo "first start (empty data dir): $ready s"
  # 100 distinct modules: the seven Rust fixtures, each with its own custom section.
  python3 - "$work/mods" <<'PY'
import glob, os, sys
out = sys.argv[1]
os.makedirs(out)
fixtures = sorted(glob.glob("fixtures/wasm/*.wasm"))
rust = [f for f in fixtures if os.path.basename(f)[:-5] in
        ("count_vowels", "exit3", "fib", "grow", "indirect", "nested", "trap")] or fixtures
for i in range(100):
    src = rust[i % len(rust)]
    name = f"variant-{i}".encode()
    payload = bytes([len(name)]) + name + b"bench"
    with open(src, "rb") as f:
        wasm = f.read()
    with open(f"{out}/m{i:03}.wasm", "wb") as f:
        f.write(wasm + bytes([0, len(payload)]) + payload)
PY
  local t0 t1
  t0=$(date +%s.%N)
  for f in "$work"/mods/*.wasm; do upload "$(basename "$f" .wasm)" "$f" ""; done
  t1=$(date +%s.%N)
  echo "100 uploads: $(python3 -c "print(f'{$t1 - $t0:.1f}')") s; $(du -sh "$work/p5" | cut -f1) on disk"
  stop
  for round in 1 2 3; do
    start "$work/p5"
    echo "restart $round: ready in $ready s, $(grep -o '([0-9]* modules loaded)' "$work/out")"
    stop
  done
}

soak() {
  echo "## Soak: 60 s of /run count_vowels (traced) at saturation, wrk -t2 -c32, RSS every 5 s"
  start "$work/soak"
  upload traced fixtures/wasm/count_vowels.wasm ""
  echo "RSS before load: $(rss_mib) MiB"
  wrk -t2 -c32 -d60s --latency -s "$work/post.lua" "$url/run?name=traced" >"$work/wrk.out" &
  local load=$! rss=()
  for _ in $(seq 12); do
    sleep 5
    rss+=("$(rss_mib)")
  done
  wait "$load"
  echo "RSS (MiB) at 5, 10, ... 60 s: ${rss[*]}"
  awk '/Requests\/sec|requests in|Non-2xx|Socket errors/ {print} $1 ~ /^(50|75|90|99)%$/ {print "  p" $1, $2}' "$work/wrk.out"
  curl -sf "$url/metrics" | grep -E '^iota_(runs|run_failures)_total'
  echo "healthz: $(curl -sf "$url/healthz")"
  stop
}

# good_run SECONDS: wrk -t1 -c4 on the traced count_vowels; prints requests, failures, p50, p99.
good_run() {
  local out
  out=$(wrk -t1 -c4 -d"$1s" --latency -s "$work/post.lua" "$url/run?name=good")
  awk '/requests in/ {r = $1} /Non-2xx/ {f += $5} /Socket errors/ {f += $4 + $6 + $8 + $10}
       $1 == "50%" {p50 = $2} $1 == "99%" {p99 = $2}
       END {printf "%d requests, %d failed (%.3f%% success), p50 %s, p99 %s", r, f, 100 * (r - f) / r, p50, p99}' \
    <<<"$(tr -d ',' <<<"$out")"
}

# sample_every SECONDS COUNT: RSS and data directory size, in the background; sets $sampler.
sample_every() {
  (for _ in $(seq "$2"); do
    sleep "$1"
    printf '%s MiB / %s KiB disk; ' "$(rss_mib)" "$(du -sk "$work/chaos" | cut -f1)"
  done) >"$work/samples" &
  sampler=$!
}

chaos() {
  echo "## Chaos: good runs of count_vowels (wrk -t1 -c4) alone, then among misbehaving guests and clients"
  start "$work/chaos" --max-concurrent-runs 16 --run-timeout-ms 2000 --memory-limit-mb 64 --max-stdout 1048576
  upload good fixtures/wasm/count_vowels.wasm ""
  upload sleeper fixtures/wasm/sleeper.wasm ""
  upload trap fixtures/wasm/trap.wasm ""
  upload flood fixtures/wasm/flood.wasm ""
  upload bomb fixtures/wasm/memory_bomb.wasm ""
  upload churn fixtures/wasm/count_vowels.wasm ""
  echo "server: --max-concurrent-runs 16 --run-timeout-ms 2000 --memory-limit-mb 64 --max-stdout 1048576"
  echo "RSS $(rss_mib) MiB, data dir $(du -sk "$work/chaos" | cut -f1) KiB before load"
  echo "alone:       $(good_run 60)"
  python3 scripts/chaos.py "$url" 60 fixtures/wasm >"$work/chaos.json" &
  local trouble=$!
  sample_every 10 6
  echo "among chaos: $(good_run 60)"
  wait "$trouble" "$sampler"
  echo "RSS / disk every 10 s during chaos: $(cat "$work/samples")"
  echo "misbehaviour made, by answer:"
  cat "$work/chaos.json"
  curl -sf "$url/metrics" | grep -E '^iota_(runs|run_failures|runs_cancelled|runs_rejected|uploads|uploads_rejected)_total|^iota_data_dir_bytes'
  echo "healthz: $(curl -sf "$url/healthz")"
  stop
}

storm() {
  local yosys=target/real-wasm/yosys.wasm
  [ -s "$yosys" ] || scripts/fetch-real-wasm.sh --with-yosys target/real-wasm >/dev/null
  echo "## Upload storm: count_vowels (wrk -t1 -c4, 60 s) alone, then while yosys.wasm uploads in a loop"
  start "$work/storm"
  upload good fixtures/wasm/count_vowels.wasm ""
  echo "alone:                $(good_run 60)"
  (while true; do
    curl -s -o /dev/null -w '%{http_code} %{time_total}s\n' -F "wasm=@$yosys" \
      "$url/upload?name=yosys&unknown_imports=trap" >>"$work/uploads"
  done) &
  local uploader=$!
  sleep 5 # the first upload is compiling
  echo "while yosys uploads:  $(good_run 60)"
  # Stop once an upload finished, to report how long one took under the load.
  while [ ! -s "$work/uploads" ]; do sleep 1; done
  kill "$uploader"
  echo "yosys uploads (status, time): $(tr '\n' ' ' <"$work/uploads")"
  stop
}

# run_seconds NAME STDIN [HEADER]: the run's own duration (its run span), in seconds.
run_seconds() {
  local headers trace_id
  headers=$(curl -sf -D - -o /dev/null -X POST --data "$2" ${3:+-H "$3"} "$url/run?name=$1")
  trace_id=$(awk 'tolower($1) == "x-iota-trace-id:" {print $2}' <<<"$headers" | tr -d '\r')
  curl -sf "$url/traces/$trace_id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["spans"][1]["duration_ns"] / 1e9)'
}

# median_of LIST...: the median of the numbers given.
median_of() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

trace() {
  echo "## Tracing costs: host-call spans and sampling, 7 rounds alternating, medians of the run spans"
  start "$work/trace"
  upload calls fixtures/wasm/syscalls.wasm "&instrument=false"
  upload calls-untimed fixtures/wasm/syscalls.wasm "&instrument=false&host_spans=false"
  upload fib fixtures/wasm/fib.wasm ""
  local on=() off=() sampled=() unsampled=()
  for _ in $(seq 7); do
    on+=("$(run_seconds calls "")")
    off+=("$(run_seconds calls-untimed "")")
    sampled+=("$(run_seconds fib 33 "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")")
    unsampled+=("$(run_seconds fib 33 "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")")
  done
  local m_on m_off m_s m_u
  m_on=$(median_of "${on[@]}") m_off=$(median_of "${off[@]}")
  m_s=$(median_of "${sampled[@]}") m_u=$(median_of "${unsampled[@]}")
  python3 -c "
on, off, s, u = $m_on, $m_off, $m_s, $m_u
print(f'100,000 fd_write calls: {on:.4f} s with host-call spans, {off:.4f} s without: {(on - off) / 1e5 * 1e9:.0f} ns per call ({on / off:.2f}x)')
print(f'fib(33), 11,405,773 calls: {s:.3f} s sampled, {u:.3f} s unsampled (totals only): {s / u:.2f}x')"
  echo "all rounds (s): on ${on[*]}; off ${off[*]}; sampled ${sampled[*]}; unsampled ${unsampled[*]}"
  stop
}

# variants DIR N: N distinct modules (the Rust fixtures, each with its own custom section).
variants() {
  python3 - "$1" "$2" <<'PY'
import glob, os, sys
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
fixtures = sorted(glob.glob("fixtures/wasm/*.wasm"))
rust = [f for f in fixtures if os.path.basename(f)[:-5] in
        ("count_vowels", "exit3", "fib", "grow", "indirect", "nested", "trap")] or fixtures
for i in range(n):
    src = rust[i % len(rust)]
    name = f"variant-{i}".encode()
    payload = bytes([len(name)]) + name + b"bench"
    with open(src, "rb") as f:
        wasm = f.read()
    with open(f"{out}/m{i:03}.wasm", "wb") as f:
        f.write(wasm + bytes([0, len(payload)]) + payload)
PY
}

# seaweed: SeaweedFS on free loopback ports in $work/weed with a bucket `iota`; exports the
# AWS_* variables of a server using it.
seaweed() {
  local weed dir ports
  weed=$(scripts/install-seaweedfs.sh)
  dir="$work/weed"
  mkdir -p "$dir"
  printf '{"identities": [{"name": "iota", "credentials": [{"accessKey": "bench", "secretKey": "bench-secret"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}' >"$dir/s3.json"
  read -r -a ports <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
  "$weed" server -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -master.volumeSizeLimitMB=64 -volume.max=0 -volume.minFreeSpace=256MiB -s3 -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" -volume.port="${ports[2]}" \
    -volume.port.grpc="${ports[3]}" -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
    -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" -s3.config="$dir/s3.json" >"$dir/log" 2>&1 &
  others+=($!)
  for _ in $(seq 600); do
    if echo "s3.bucket.create -name iota" | timeout 20 "$weed" shell \
      -master="127.0.0.1:${ports[0]}.${ports[1]}" -filer="127.0.0.1:${ports[4]}.${ports[5]}" 2>/dev/null |
      grep -qE 'created bucket|already exist'; then
      break
    fi
    sleep 0.1
  done
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 \
    AWS_ENDPOINT="http://127.0.0.1:${ports[6]}" AWS_ALLOW_HTTP=true
}

# launch NAME DATA_DIR [flags...]: starts a server beside the others; sets ${NAME}_url,
# ${NAME}_pid and ${NAME}_ready (seconds until it listened).
launch() {
  local name=$1 data=$2 t0 p
  shift 2
  t0=$(date +%s.%N)
  "$bin" serve --addr 127.0.0.1:0 --data-dir "$data" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  p=$!
  others+=("$p")
  for _ in $(seq 60000); do grep -q listening "$work/$name.out" 2>/dev/null && break; sleep 0.005; done
  printf -v "${name}_pid" '%s' "$p"
  printf -v "${name}_url" '%s' "$(grep listening "$work/$name.out" | grep -o 'http://[0-9.:]*')"
  printf -v "${name}_ready" '%s' "$(python3 -c "print(f'{$(date +%s.%N) - $t0:.3f}')")"
}

# metric URL NAME: a value of /metrics.
metric() { curl -sf "$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

fleet() {
  echo "## Fleet: servers on one S3 store (SeaweedFS $("$(scripts/install-seaweedfs.sh)" version 2>/dev/null | awk 'NR == 1 {print $3}') on loopback, same machine)"
  seaweed
  local store=s3://iota/bench
  launch a "$work/fleet-a" --store "$store" --instance-id a
  launch b "$work/fleet-b" --store "$store" --instance-id b
  echo "### Upload on A to the first successful run on B (--store-poll-ms 1000, the default), 20 modules"
  variants "$work/prop" 20
  python3 - "$a_url" "$b_url" "$work/prop" <<'PY'
import glob, random, statistics, sys, time, urllib.error, urllib.request
a, b, mods = sys.argv[1], sys.argv[2], sorted(glob.glob(sys.argv[3] + "/*.wasm"))
def post(url, data):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST")) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
times = []
for i, path in enumerate(mods):
    name = f"p{i}"
    # Uploads at random points of B's poll interval (one right after B's last load would
    # always wait nearly a whole interval).
    time.sleep(random.random())
    assert post(f"{a}/upload?name={name}", open(path, "rb").read()) == 201
    t0 = time.perf_counter()
    # Any answer but 404 means B has the module (some variants exit non-zero or trap).
    while post(f"{b}/run?name={name}", b"10") == 404:
        time.sleep(0.005)
    times.append(time.perf_counter() - t0)
    urllib.request.urlopen(urllib.request.Request(f"{a}/modules/{name}", method="DELETE"))
q = statistics.quantiles(times, n=10)
print(f"seconds from the 201 on A to B's first run: min {min(times):.3f}, median "
      f"{statistics.median(times):.3f}, p90 {q[8]:.3f}, max {max(times):.3f}")
PY

  echo "### A new server's start with 100 modules in the store"
  variants "$work/cold" 100
  local t0 t1
  t0=$(date +%s.%N)
  for f in "$work"/cold/*.wasm; do upload_to "$a_url" "c$(basename "$f" .wasm)" "$f"; done
  t1=$(date +%s.%N)
  echo "100 uploads on A: $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
  # Local: the same 100 modules in a data directory.
  launch l "$work/fleet-local"
  for f in "$work"/cold/*.wasm; do upload_to "$l_url" "c$(basename "$f" .wasm)" "$f"; done
  kill "$l_pid"; wait "$l_pid" 2>/dev/null || true
  for round in 1 2 3; do
    rm -rf "$work/fleet-new"
    launch n "$work/fleet-new" --store "$store" --instance-id "new$round"
    echo "round $round: new server (empty cache): ready in $n_ready s, $(grep -o '([0-9]* modules loaded)' "$work/n.out"), artifacts fetched $(metric "$n_url" iota_store_artifacts_fetched_total), compiled $(metric "$n_url" iota_store_artifacts_compiled_total)"
    kill "$n_pid"; wait "$n_pid" 2>/dev/null || true
    launch n "$work/fleet-new" --store "$store" --instance-id "new$round"
    echo "round $round: same server restarted (warm cache): ready in $n_ready s, artifacts fetched $(metric "$n_url" iota_store_artifacts_fetched_total) (from the cache)"
    kill "$n_pid"; wait "$n_pid" 2>/dev/null || true
    launch l "$work/fleet-local"
    echo "round $round: data directory restart: ready in $l_ready s, $(grep -o '([0-9]* modules loaded)' "$work/l.out")"
    kill "$l_pid"; wait "$l_pid" 2>/dev/null || true
  done
  if [ -s target/real-wasm/yosys.wasm ]; then
    local out
    out=$(curl -sf -F "wasm=@target/real-wasm/yosys.wasm" "$a_url/upload?name=yosys&unknown_imports=trap")
    echo "yosys.wasm uploaded on A: $(python3 -c "import json, sys; t = json.loads(sys.argv[1])['timings_ms']; print(f\"compile {t['compile_ms'] / 1e3:.1f} s, store {t['store_ms'] / 1e3:.1f} s\")" "$out")"
    rm -rf "$work/fleet-new"
    launch n "$work/fleet-new" --store "$store" --instance-id yosys
    echo "new server with yosys among 101 modules: ready in $n_ready s, artifacts fetched $(metric "$n_url" iota_store_artifacts_fetched_total), compiled $(metric "$n_url" iota_store_artifacts_compiled_total), $(du -sh "$work/fleet-new/cache" | cut -f1) cached"
    kill "$n_pid"; wait "$n_pid" 2>/dev/null || true
  fi
  # A server whose engine has no artifacts compiles them all: the data directory without them.
  rm -f "$work"/fleet-local/compiled/*.cwasm
  launch l "$work/fleet-local"
  echo "data directory without artifacts (compiles 100): ready in $l_ready s, compiled $(metric "$l_url" iota_store_artifacts_compiled_total)"
  kill "$l_pid"; wait "$l_pid" 2>/dev/null || true

  echo "### /run count_vowels: the S3 store against the data directory, wrk -t2 -c16, 10 s per measurement"
  launch l "$work/fleet-run-local"
  upload_to "$a_url" traced fixtures/wasm/count_vowels.wasm
  upload_to "$l_url" traced fixtures/wasm/count_vowels.wasm
  # B serves from the store, A's upload.
  for _ in $(seq 1000); do [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$b_url/run?name=traced")" = 200 ] && break; sleep 0.01; done
  kill "$a_pid"; wait "$a_pid" 2>/dev/null || true
  printf '%-9s %10s %9s %9s %7s %12s\n' store req/s p50 p99 errors 'cpu µs/req'
  # The order alternates from round to round.
  for round in 1 2 3 4; do
    for store in local s3; do
      if [ $((round % 2)) = 0 ]; then store=$([ "$store" = local ] && echo s3 || echo local); fi
      if [ "$store" = local ]; then pid=$l_pid url=$l_url; else pid=$b_pid url=$b_url; fi
      echo "$(wrk_line traced 10 16)   $store (round $round)"
    done
  done
  pid=
  stop_others
}

components() {
  echo "## Components: the wasi:http handler (POST /NAME/vowels) and count_vowels as a command component (/run), wrk -t2 -c16, 10 s per measurement"
  start "$work/components"
  upload handler fixtures/wasm/http_handler.wasm ""
  upload handler-untraced fixtures/wasm/http_handler.wasm "&instrument=false"
  upload command fixtures/wasm/count_vowels.component.wasm ""
  upload command-untraced fixtures/wasm/count_vowels.component.wasm "&instrument=false"
  printf '%-17s %10s %9s %9s %7s %12s\n' mode req/s p50 p99 errors 'cpu µs/req'
  for round in 1 2; do
    for mode in handler-untraced handler; do
      echo "$(wrk_line "$mode" 10 16 "/$mode/vowels")   (round $round)"
    done
    for mode in command-untraced command; do
      echo "$(wrk_line "$mode" 10 16)   (round $round)"
    done
  done
  stop
}

case $what in
  p3 | p4 | p5 | soak | chaos | storm | trace | components | fleet) "$what" ;;
  all) p3; p4; p5; soak; chaos; trace; components ;;
  *) echo "usage: $0 [p3|p4|p5|soak|chaos|storm|trace|components|fleet|all]" >&2; exit 2 ;;
esac
