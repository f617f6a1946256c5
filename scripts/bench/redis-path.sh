#!/usr/bin/env bash
# The distributed path's figures (issue 13): one `drl serve` on a local Redis Cluster (3 masters,
# 1 replica each, scripts/redis-cluster.sh) against the textbook sorted-set sliding log run
# straight from redis-benchmark on the same cluster, and what a decision costs.
#
#   [DRL=path/to/drl] scripts/bench/redis-path.sh [--runs N] [--duration S] [--out DIR]
#       [--singles] [--perf]
#
# --singles skips the native batches (a quicker look at HTTP singles); --perf records a call-graph
# profile of the node during each wrk run (perf record -g, in DIR/perf-MODE-ROUND.data).
#
# Each round runs, one after another on the same cluster (alternated, so a busy machine weighs
# on all alike): the sorted-set log from redis-benchmark (EVALSHA of ZREMRANGEBYSCORE, ZCARD,
# ZADD, PEXPIRE; limit 100 per 60 s; 64 clients; 100 000 random keys); wrk on HTTP
# POST /v1/check (64 connections, 100 000 users, 100/min each: every check is an admission) in
# fast mode and in strict mode; native gRPC batches of 100 (`drl bench`, 16 workers) in fast and
# strict mode. For each: decisions/s, Redis CPU per decision (INFO cpu of every master, before
# and after), node CPU per decision (/proc/PID/stat) and, for drl, how its keys spread over the
# masters (max / mean of DBSIZE). Prints one TSV row per run and the medians; the ratios asked
# for are computed from the medians of runs taken alternately. Needs redis-server,
# redis-benchmark, wrk, python3 and a release build of drl (built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

runs=3
duration=10
out=target/bench-redis
singles=0
perf=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --singles) singles=1; shift ;;
    --perf) perf=1; shift ;;
    *) echo "usage: $0 [--runs N] [--duration S] [--out DIR] [--singles] [--perf]" >&2; exit 2 ;;
  esac
done
need redis-server redis-cli redis-benchmark wrk python3
# DRL=path: another build of drl (e.g. to compare two versions on one cluster).
release_drl
mkdir -p "$out"
out=$(cd "$out" && pwd)
port=${BENCH_PATH_PORT:-17500}
http_port=$((port + 100))
grpc_port=$((port + 101))
cluster_dir="$out/cluster"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  BASE_PORT=$port REPLICAS=1 DRL_CLUSTER_DIR="$cluster_dir" scripts/redis-cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
BASE_PORT=$port REPLICAS=1 DRL_CLUSTER_DIR="$cluster_dir" scripts/redis-cluster.sh up >&2
# The masters that hold slots, once every replica has attached (right after `up` a replica may
# still be listed as a master of nothing).
for _ in $(seq 100); do
  [ "$(redis-cli -p "$port" cluster nodes | grep -c slave)" = 3 ] && break
  sleep 0.1
done
masters=$(redis-cli -p "$port" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && NF >= 9 {split($2, a, "@"); print a[1]}' | sort)
[ "$(echo "$masters" | wc -l)" = 3 ] || { echo "expected 3 masters, got: $masters" >&2; exit 1; }
urls=$(for m in $masters; do printf '"redis://%s", ' "$m"; done | sed 's/, $//')

# Sum of used_cpu_sys + used_cpu_user over the masters, in seconds.
redis_cpu() {
  local total=0 m
  for m in $masters; do
    total=$(redis-cli -p "${m##*:}" info cpu | tr -d '\r' |
      awk -F: -v t="$total" '/^used_cpu_(sys|user):/ {t += $2} END {printf "%.6f", t}')
  done
  echo "$total"
}
# utime + stime of a process, in seconds.
proc_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.4f", ($14 + $15) / hz}' "/proc/$1/stat"
}
# max / mean of the masters' key counts.
spread() {
  local counts="" m
  for m in $masters; do counts="$counts $(redis-cli -p "${m##*:}" dbsize)"; done
  echo "$counts" | python3 -c 'import sys; c=[int(x) for x in sys.stdin.read().split()]; m=sum(c)/len(c); print("%.3f" % (max(c)/m if m else 0))'
}
# A store counter of the node's /metrics (0 if absent).
store_event() {
  curl -sf "http://127.0.0.1:$http_port/metrics" |
    awk -v e="event=\"$1\"" '$1 ~ /^drl_store_events_total/ && index($1, e) {print $2; f=1} END {if (!f) print 0}'
}
flush() {
  local m
  for m in $masters; do redis-cli -p "${m##*:}" flushall >/dev/null; done
}

# The baseline every Redis comparison uses: scripts/baselines/zset-sliding-log.lua.
cp scripts/baselines/zset-sliding-log.lua "$out/zset.lua"
for m in $masters; do sha=$(redis-cli -p "${m##*:}" -x script load < "$out/zset.lua"); done
# wrk's requests: POST /v1/check for one of 100 000 users, drawn uniformly.
cp scripts/bench/wrk-check.lua "$out/check.lua"
for consistency in fast strict; do
  cat > "$out/$consistency.yaml" <<EOF
store:
  kind: redis
  redis:
    urls: [$urls]
    cluster: true
    consistency: $consistency
    on_error: deny
    timeout: 500ms
default:
  limit: 100
  window: 1m
EOF
done

start_server() {
  "$drl" serve --config "$out/$1.yaml" --http-addr "127.0.0.1:$http_port" \
    --grpc-addr "127.0.0.1:$grpc_port" > "$out/server-$1.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "drl serve did not become ready" >&2
  exit 1
}

rows="$out/runs.tsv"
printf 'round\twhat\tdecisions_per_s\tredis_cpu_us_per_decision\tnode_cpu_us_per_decision\tspread\terrors\tchecks_per_call\n' > "$rows"
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" | tee -a "$rows" >&2; }

for round in $(seq "$runs"); do
  # The baseline: 64 clients, 100 000 random keys, calls sized for about $duration seconds.
  flush
  r0=$(redis_cpu)
  t0=$(date +%s.%N)
  csv=$(redis-benchmark -p "$port" --cluster -c 64 -r 100000 -n $((40000 * duration)) --csv \
    EVALSHA "$sha" 1 'rl:{tag}:__rand_int__' 60000 100 __rand_int__ 2>/dev/null | tail -1)
  t1=$(date +%s.%N)
  r1=$(redis_cpu)
  rps=$(echo "$csv" | cut -d, -f2 | tr -d '"')
  calls=$((40000 * duration))
  row "$round" zset "$rps" "$(echo "($r1 - $r0) * 1000000 / $calls" | bc -l | xargs printf '%.2f')" \
    - - 0 -
  for consistency in fast strict; do
    flush
    start_server "$consistency"
    sleep 1
    c0=$(store_event batch_calls); k0=$(store_event batch_checks)
    perf_pid=""
    if [ "$perf" = 1 ]; then
      perf record -g -o "$out/perf-$consistency-$round.data" -p "$server_pid" \
        -- sleep "$duration" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    r0=$(redis_cpu); n0=$(proc_cpu "$server_pid")
    wrk -t 2 -c 64 -d "${duration}s" -s "$out/check.lua" "http://127.0.0.1:$http_port" \
      > "$out/wrk-$consistency-$round.txt"
    r1=$(redis_cpu); n1=$(proc_cpu "$server_pid")
    [ -n "$perf_pid" ] && wait "$perf_pid"
    c1=$(store_event batch_calls); k1=$(store_event batch_checks)
    total=$(awk '/requests in/ {print $1}' "$out/wrk-$consistency-$round.txt")
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out/wrk-$consistency-$round.txt")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out/wrk-$consistency-$round.txt")
    row "$round" "http-$consistency" "$rps" \
      "$(echo "($r1 - $r0) * 1000000 / $total" | bc -l | xargs printf '%.2f')" \
      "$(echo "($n1 - $n0) * 1000000 / $total" | bc -l | xargs printf '%.2f')" \
      "$(spread)" "${non2xx:-0}" \
      "$(echo "($k1 - $k0) / ($c1 - $c0 + 0.000001)" | bc -l | xargs printf '%.2f')"
    if [ "$singles" = 1 ]; then
      stop_server
      continue
    fi
    flush
    r0=$(redis_cpu); n0=$(proc_cpu "$server_pid")
    "$drl" bench --target native --server "http://127.0.0.1:$grpc_port" --concurrency 16 \
      --batch 100 --keys 100000 --duration "${duration}s" --json > "$out/native-$consistency-$round.json"
    r1=$(redis_cpu); n1=$(proc_cpu "$server_pid")
    read -r decisions rate errors < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["decisions"], r["decisions_per_s"], r["errors"])' "$out/native-$consistency-$round.json")
    row "$round" "batch100-$consistency" "$rate" \
      "$(echo "($r1 - $r0) * 1000000 / $decisions" | bc -l | xargs printf '%.2f')" \
      "$(echo "($n1 - $n0) * 1000000 / $decisions" | bc -l | xargs printf '%.2f')" \
      "$(spread)" "$errors" -
    stop_server
  done
done

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$rows" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(what, field):
    vals = [float(r[field]) for r in rows if r["what"] == what and r[field] not in ("-", "")]
    return statistics.median(vals) if vals else float("nan")
whats = ["zset", "http-fast", "http-strict", "batch100-fast", "batch100-strict"]
print("| run | decisions/s | Redis CPU µs/decision | node CPU µs/decision | keys max/mean | checks per call |")
print("|---|---|---|---|---|---|")
for w in whats:
    print(f"| {w} | {med(w, 'decisions_per_s'):,.0f} | {med(w, 'redis_cpu_us_per_decision'):.2f} | "
          f"{med(w, 'node_cpu_us_per_decision'):.2f} | {med(w, 'spread'):.3f} | "
          f"{med(w, 'checks_per_call'):.2f} |")
z = med("zset", "decisions_per_s")
zc = med("zset", "redis_cpu_us_per_decision")
print()
print(f"fast / zset: {med('http-fast', 'decisions_per_s') / z:.2f}  "
      f"strict / zset: {med('http-strict', 'decisions_per_s') / z:.2f}  "
      f"batch100 fast / single fast: {med('batch100-fast', 'decisions_per_s') / med('http-fast', 'decisions_per_s'):.2f}  "
      f"Redis CPU batch100 fast / zset: {med('batch100-fast', 'redis_cpu_us_per_decision') / zc:.2f}")
EOF
