#!/usr/bin/env bash
# `scripts/bench.sh all`, the whole suite: builds release binaries, starts on loopback what it
# needs, measures, and writes a generated section (machine, figures, exact commands, plots, a
# profile) into docs/benchmarks.md. Not part of the test command: CI does not run benchmarks.
#
#   scripts/bench.sh all            full run (about 8 minutes plus compiling); updates the docs
#   scripts/bench.sh all --quick    smoke run (under 2 minutes plus compiling): shorter runs, the
#                                   key series up to 100 000 keys; prints the section only
#
# Options: --docs / --no-docs force writing docs/benchmarks.md and docs/bench-*.svg or not;
# --note "TEXT" adds a note to the section.
#
# What runs, in order (each `drl bench` run lasts 10 s, 3 s with --quick):
#  1. a `drl serve` on the memory store (every pair 1 000 000 a minute, so all allowed): the Envoy
#     API (closed loop, 64 workers, 10 000 uniform keys), the native batch API (batches of 100,
#     16 workers), HTTP /v1/check (32 connections); then a CPU profile of the server (perf) under
#     the Envoy load;
#  2. the key-count series on the memory store: for 1k, 100k, 1M, 10M keys a fresh node; fill it
#     with exactly K keys (sequential), measure decisions/s and p99 over the K keys (native batches
#     of 100, uniform), reading RSS after the fill, 3 s later and after the measure; wait until
#     every key's window has passed and the sweeper has run, read RSS; insert K new keys, read RSS;
#  3. a local Redis Cluster (scripts/redis-cluster.sh: 3 masters, 1 replica each) and a `drl serve`
#     on it in `consistency: fast`, then one in `strict`: the Envoy API and native batches of 100;
#  4. the baselines on the same cluster: redis-benchmark running drl's own sliding-window script
#     (the exact bytes drl loads, EVALSHA with the arguments drl sends for the same limit, random
#     keys; one call in flight per connection, and again pipelined by 16) and a hand-written
#     sorted-set sliding log (ZREMRANGEBYSCORE/ZCARD/ZADD/PEXPIRE); then every algorithm's script
#     alone next to that log, limit 100 per 60 s, on a single redis-server and on this cluster
#     (scripts/bench/redis-scripts.sh: alternated, medians of 3, calls/s, Redis CPU per decision
#     and the ratios to the log);
#  5. scripts/bench/redis-path.sh on a cluster of its own: wrk on HTTP /v1/check through one node
#     (fast, strict) and native batches of 100, alternated with the sorted-set log from
#     redis-benchmark, with Redis and node CPU per decision and the keys' spread over masters
#     (3 rounds, medians; 1 round with --quick). Its table goes to target/bench/redis-path.md.
# Everything started here (drl nodes, the Redis Cluster, perf) is stopped on exit. Raw results
# are kept in target/bench/. Installs redis-server/redis-tools, gnuplot-nox and linux-perf with
# apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

bench_options 2,30 "$@"
no_extra_options
if [ "$quick" = 1 ]; then
  duration=3s
  series="1000 100000"
  profile_s=3
  mode="quick smoke run (3 s per scenario; not for citing)"
else
  duration=10s
  series="1000 100000 1000000 10000000"
  profile_s=5
  mode="full run (10 s per scenario)"
fi
started_at=$(date +%s)

target="${CARGO_TARGET_DIR:-target}"
out="$target/bench"
rm -rf "$out"
mkdir -p "$out/runs" "$out/series" "$out/profile"
say() { printf '\n== %s (%ss)\n' "$*" $(($(date +%s) - started_at)) >&2; }

say "tools"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v gnuplot >/dev/null 2>&1 || missing+=(gnuplot-nox)
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "warning: could not install ${missing[*]}" >&2
  else
    echo "warning: missing ${missing[*]}; install them" >&2
  fi
fi
for tool in redis-server redis-cli redis-benchmark python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed" >&2; exit 1; }
done

say "build"
cargo build --release --locked -p drl
drl="$target/release/drl"
report="python3 scripts/bench/report.py"
run="python3 scripts/bench/report.py server run"

# --- what this script starts, stopped on any exit ---------------------------------------------
server_pid=""
perf_pid=""
cluster_dir="$(pwd)/$out/redis-cluster"
cluster_port=${BENCH_REDIS_PORT:-17400}
cluster_up=0
cleanup() {
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; fi
  stop_server
  if [ "$cluster_up" = 1 ]; then
    BASE_PORT=$cluster_port REPLICAS=1 DRL_CLUSTER_DIR="$cluster_dir" scripts/redis-cluster.sh down >/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM



# scenario NAME GROUP "TITLE" BENCH-ARGS...: one timed `drl bench` run with CPU sampling.
scenario() {
  local name=$1 group=$2 title=$3
  shift 3
  say "$title"
  $run --server-pid "$server_pid" --out "$out/runs/$name.json" -- \
    "$drl" bench --duration "$duration" "$@"
  printf '%s\t%s\t%s\n' "$name" "$group" "$title" >> "$out/runs/runs.list"
}

say "machine"
{
  machine_facts
  echo "redis=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
  echo "drl=$("$drl" --version 2>/dev/null || echo drl), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (crates modified)')"
  echo "gnuplot=$(gnuplot --version 2>/dev/null || echo absent)"
  echo "perf=$(perf --version 2>/dev/null || echo absent)"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "mode=$mode"
  echo "duration=$duration"
  echo "note=$note"
} > "$out/machine.env"
cat "$out/machine.env" >&2

# --- 1. memory store ------------------------------------------------------------------------------
memory_config memory 1000000 1m
start_drl memory
scenario mem-envoy memory "Envoy ShouldRateLimit, closed loop, 64 workers" \
  --target envoy --server "http://$GRPC" --concurrency 64 --keys 10000
scenario mem-native memory "native Check, batches of 100, closed loop, 16 workers" \
  --target native --server "http://$GRPC" --concurrency 16 --batch 100 --keys 10000
scenario mem-http memory "HTTP POST /v1/check, closed loop, 32 connections" \
  --target http --server "http://$HTTP" --concurrency 32 --keys 10000

say "profile: the server under the Envoy load (${profile_s} s of perf record)"
"$drl" bench --target envoy --server "http://$GRPC" --concurrency 64 --keys 10000 \
  --duration $((profile_s + 3))s --json > "$out/profile/load.json" &
load_pid=$!
sleep 1.5
if perf record -e cpu-clock -F 999 -g -p "$server_pid" -o "$out/profile/perf.data" \
     -- sleep "$profile_s" > "$out/profile/record.log" 2>&1; then
  perf report -i "$out/profile/perf.data" --stdio --no-children --sort dso -g none \
    > "$out/profile/dso.txt" 2> /dev/null || true
  perf report -i "$out/profile/perf.data" --stdio --no-children --sort dso,symbol -g none \
    > "$out/profile/symbols.txt" 2> /dev/null || true
  echo "perf record -e cpu-clock -F 999 -g -p \$SERVER_PID -- sleep $profile_s" > "$out/profile/command"
else
  echo "perf record failed (no profile):" >&2
  cat "$out/profile/record.log" >&2
fi
wait "$load_pid" || true
stop_server

# --- 2. key-count series --------------------------------------------------------------------------
# A node per row; its window W outlasts filling (and, on a machine not too busy, measuring), so
# exactly K keys are live when the RSS after filling is read. Limit 60 000 per window: every check is allowed, and the state is the
# default u16 state (sparse, then a u16 ring; limits up to 65 535).
for keys in $series; do
  if [ "$keys" -ge 10000000 ]; then window=90; elif [ "$keys" -ge 1000000 ]; then window=25
  elif [ "$quick" = 1 ]; then window=8; else window=15; fi
  name="keys-$keys"
  memory_config "$name" 60000 "${window}s"
  start_drl "$name"
  rss0=$(rss_kib "$server_pid")
  say "$keys keys: fill"
  t0=$(date +%s.%N)
  "$drl" bench --target native --batch 100 --concurrency 8 --server "http://$GRPC" \
    --keys "$keys" --sequential --requests $(((keys + 99) / 100)) --timeout 30s --json \
    > "$out/series/$name-fill.json"
  rss_load=$(rss_kib "$server_pid")
  t_fill=$(date +%s.%N)
  # The same K keys, once the allocator has returned what the table's growth freed during the
  # fill (mimalloc purges a freed range after 1 s; the node asks it to collect every second).
  sleep 3
  rss_settled=$(rss_kib "$server_pid")
  scenario "$name" series "native Check, batches of 100, 8 workers, $keys keys" \
    --target native --batch 100 --concurrency 8 --server "http://$GRPC" --keys "$keys"
  t1=$(date +%s.%N)
  # Still the K keys (W outlasts fill and measure), now with the measure's admissions: a key
  # with admissions in more than 4 buckets holds a ring.
  rss_live=$(rss_kib "$server_pid")
  say "$keys keys: waiting for the windows to pass (${window} s) and the sweep"
  sleep $((window + 3))
  # The sweeper runs every 2 s and a sweep of millions of keys takes seconds; mimalloc returns
  # what it freed within about 2 s more. Wait until the server has been idle for 4 s in a row,
  # longer than a sweep interval, so the idle time is not just the gap before the next sweep
  # (a 1 s rule read the 10 M row's RSS before its sweep had run).
  idle=0
  for _ in $(seq 240); do
    a=$(cpu_ticks "$server_pid"); sleep 0.5; b=$(cpu_ticks "$server_pid")
    if [ $((b - a)) -le 2 ]; then idle=$((idle + 1)); else idle=0; fi
    [ "$idle" -ge 8 ] && break
  done
  rss_expired=$(rss_kib "$server_pid")
  say "$keys keys: insert $keys new keys"
  "$drl" bench --target native --batch 100 --concurrency 8 --server "http://$GRPC" \
    --keys "$keys" --first-key "$keys" --sequential --requests $(((keys + 99) / 100)) --timeout 30s --json \
    > "$out/series/$name-refill.json"
  rss_refill=$(rss_kib "$server_pid")
  load_s=$(echo "$t1 - $t0" | bc -l)
  fill_s=$(echo "$t_fill - $t0" | bc -l)
  printf 'keys=%s\nwindow_s=%s\nfill_s=%s\nload_s=%s\nrss_start_kib=%s\nrss_load_kib=%s\nrss_settled_kib=%s\nrss_live_kib=%s\nrss_expired_kib=%s\nrss_refill_kib=%s\n' \
    "$keys" "$window" "$fill_s" "$load_s" "$rss0" "$rss_load" "$rss_settled" "$rss_live" "$rss_expired" "$rss_refill" > "$out/series/$name.env"
  cat "$out/series/$name.env" >&2
  stop_server
done

# --- 3. Redis Cluster, fast and strict ------------------------------------------------------------
say "Redis Cluster on 127.0.0.1:$cluster_port.. (3 masters, 1 replica each)"
cluster_up=1
BASE_PORT=$cluster_port REPLICAS=1 DRL_CLUSTER_DIR="$cluster_dir" scripts/redis-cluster.sh up >&2
masters=$(redis-cli -p "$cluster_port" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {split($2, a, "@"); print a[1]}' | sort)
urls=$(for m in $masters; do printf '"redis://%s", ' "$m"; done | sed 's/, $//')
echo "masters: $masters" >&2
for consistency in fast strict; do
  cat > "$out/redis-$consistency.yaml" <<EOF
store:
  kind: redis
  redis:
    urls: [$urls]
    cluster: true
    consistency: $consistency
    on_error: deny
    timeout: 500ms
default:
  limit: 1000000
  window: 1m
EOF
  start_drl "redis-$consistency"
  scenario "redis-$consistency-envoy" "redis-$consistency" "Envoy ShouldRateLimit, closed loop, 64 workers" \
    --target envoy --server "http://$GRPC" --concurrency 64 --keys 10000
  scenario "redis-$consistency-native" "redis-$consistency" "native Check, batches of 100, closed loop, 16 workers" \
    --target native --server "http://$GRPC" --concurrency 16 --batch 100 --keys 10000
  stop_server
done

# --- 4. baselines: the same scripts straight from redis-benchmark ---------------------------------
say "baselines: redis-benchmark on the same cluster"
# drl's sliding-window script, byte for byte as drl-redis builds it (prelude, the algorithm, the
# single-check trailer), and the hand-written sorted-set log.
lua=crates/drl-redis/src/lua
{ printf '#!lua\n'; cat "$lua/prelude.lua"; echo; cat "$lua/sliding_window.lua"; echo; sed 's/STEP/sliding_window/g' "$lua/single.lua"; } \
  > "$out/drl-sliding-window.lua"
# The baseline every Redis comparison uses: scripts/baselines/zset-sliding-log.lua.
cp scripts/baselines/zset-sliding-log.lua "$out/zset-sliding-log.lua"
sha_drl=""; sha_zset=""
for m in $masters; do
  port=${m##*:}
  sha_drl=$(redis-cli -p "$port" -x script load < "$out/drl-sliding-window.lua")
  sha_zset=$(redis-cli -p "$port" -x script load < "$out/zset-sliding-log.lua")
done
# What drl sends for `limit: 1000000, window: 1m` at the default precision (60 buckets):
# '' (server clock), hits 1, N, T in ns, bucket width 1 s, 61 ring slots, T mod width 0
# (Policy::new in drl-core, scripts::call in drl-redis).
drl_args="'' 1 1000000 60000000000 1000000000 61 0"
echo "sha drl=$sha_drl zset=$sha_zset" >&2
# baseline NAME "TITLE" ARGS...: calibrates the count on a short run, then runs for about $duration.
baseline() {
  local name=$1 title=$2
  shift 2
  say "$title"
  local seconds=${duration%s}
  local probe rps n
  probe=$(redis-benchmark -p "$cluster_port" --cluster -c 64 -r 10000 -n 20000 --csv "$@" 2>/dev/null | tail -1)
  rps=$(echo "$probe" | cut -d, -f2 | tr -d '"')
  n=$(printf '%.0f' "$(echo "$rps * $seconds" | bc -l)")
  [ "$n" -ge 20000 ] || n=20000
  redis-benchmark -p "$cluster_port" --cluster -c 64 -r 10000 -n "$n" --csv "$@" 2>/dev/null | tail -1 \
    > "$out/runs/$name.csv"
  local shown="redis-benchmark -p \$PORT --cluster -c 64 -r 10000 -n $n --csv"
  for a in "$@"; do
    case "$a" in
      "$sha_drl") shown="$shown \$SHA_DRL" ;;
      "$sha_zset") shown="$shown \$SHA_ZSET" ;;
      "") shown="$shown ''" ;;
      *) shown="$shown $a" ;;
    esac
  done
  echo "$shown" > "$out/runs/$name.command"
  printf '%s\t%s\t%s\n' "$name" baseline "$title" >> "$out/runs/runs.list"
  cat "$out/runs/$name.csv" >&2
}
# shellcheck disable=SC2086
baseline direct-drl "redis-benchmark: drl's sliding-window script (EVALSHA), random keys" \
  EVALSHA "$sha_drl" 1 'drl:W{tag}:__rand_int__' '' 1 1000000 60000000000 1000000000 61 0
baseline direct-drl-p16 "redis-benchmark: drl's sliding-window script (EVALSHA), random keys, pipelined by 16" \
  -P 16 EVALSHA "$sha_drl" 1 'drl:W{tag}:__rand_int__' '' 1 1000000 60000000000 1000000000 61 0
baseline direct-zset "redis-benchmark: hand-written sorted-set sliding log (EVALSHA), random keys" \
  EVALSHA "$sha_zset" 1 'rl:{tag}:__rand_int__' 60000 1000000 __rand_int__
# Every algorithm's script alone next to the sorted-set log, on a single redis-server and on this
# cluster, alternated, medians of 3 (its own script: scripts/bench/redis-scripts.sh --help).
say "each script alone: scripts/bench/redis-scripts.sh"
scripts_quick=()
[ "$quick" = 1 ] && scripts_quick=(--quick)
mkdir -p "$out/scripts"
scripts/bench/redis-scripts.sh "${scripts_quick[@]}" --cluster-port "$cluster_port" --out "$out/scripts" \
  > "$out/scripts/table.md"
cat "$out/scripts/table.md" >&2
echo "drl_args=$drl_args" >> "$out/machine.env"
echo "sha_drl=$sha_drl" >> "$out/machine.env"
echo "sha_zset=$sha_zset" >> "$out/machine.env"
echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.env"
echo "elapsed_s=$(($(date +%s) - started_at))" >> "$out/machine.env"

# --- 5. the distributed path against the sorted-set log, costs per decision -----------------------
say "the distributed path: scripts/bench/redis-path.sh"
rounds=3
[ "$quick" = 1 ] && rounds=1
DRL="$drl" scripts/bench/redis-path.sh --runs "$rounds" --duration "${duration%s}" --out "$out/redis-path" \
  > "$out/redis-path.md"
cat "$out/redis-path.md" >&2

# --- report ---------------------------------------------------------------------------------------
say "report"
plots="$out"
[ "$docs" = 1 ] && plots=docs
$report suite --out "$out" --plots "$plots" > "$out/section.md"
if [ "$docs" = 1 ]; then
  $report splice "$out/section.md" docs/benchmarks.md
  echo "docs/benchmarks.md and docs/bench-*.svg updated" >&2
else
  cat "$out/section.md"
  echo "(section in $out/section.md, plots in $out/; docs/benchmarks.md left alone)" >&2
fi
