#!/usr/bin/env bash
# Soak test: a fixed-rate open-loop load over a rolling key set against a drl node, on the memory
# store and/or on Redis, for a long time; then the load stops, the windows pass, and memory must
# come back.
#
#   scripts/soak.sh [--duration 10m] [--rate 10000] [--store memory|redis|both]
#                   [--keys 1000000] [--roll 1m] [--window 1m] [--sample 5s]
#                   [--target envoy|native] [--batch 1] [--timeout 5s] [--tolerance-mib 16]
#                   [--tolerance-pct 25] [--profile release|debug] [--no-build] [--out DIR]
#
# For each store it starts a node on free loopback ports (and, for Redis, one local redis-server
# without persistence, the node on it with `consistency: fast`), then runs `drl bench --target
# envoy --rate R --roll ROLL` in consecutive segments of --sample each until --duration has
# passed (--target native --batch N sends N checks per request: N times the decisions for the
# same number of requests; a request unanswered after --timeout is an error). The rule is 100 per --window per key. The K keys in use slide by K every ROLL (wall clock), so keys keep falling out of use
# and expiring while the load goes on. After each segment it samples the node's resident memory
# (VmRSS of /proc/<pid>/status), the segment's latency percentiles, requests and errors, and for
# Redis its used_memory and key count. Then the load stops and it samples once a second until
# memory is back (or the wait runs out: the window, plus 30 s).
#
# Baseline and pass/fail: the baseline is what the store holds with no key: the node's VmRSS
# (and Redis's used_memory and key count) sampled after the node has started and before any
# load. The run passes if no request failed, and within the wait after the load: the node's RSS
# is at most baseline + tolerance, the tolerance being --tolerance-mib (default 16 MiB: threads'
# stacks and the allocator's working memory) plus --tolerance-pct (default 25%) of the growth
# from baseline to peak (what stays after every key is gone is mostly what the allocator keeps
# of the memory store's freed slot arrays; see docs/soak.md), and for Redis the key count is
# back to the baseline and used_memory is at most baseline + 4 MiB. The wait is bounded: memory
# is polled, not waited for by a fixed sleep, so a pass ends as soon as it is shown. A run whose
# load did not raise the node's RSS by at least twice the tolerance proves nothing about
# reclamation and fails as inconclusive (use more keys, a longer window or a higher rate).
#
# It builds target/<profile>/drl first, unless --no-build (scripts/test.sh runs it on the debug
# binary its tests have just built).
#
# Output: the samples of each store in DIR/<store>.csv (default target/soak), a trend summary on
# stdout (RSS slope over the second half of the load, p99 of the first and second halves, errors,
# memory after the load) and the exit status: 0 pass, 1 fail. Everything it starts it stops.
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10m
RATE=10000
STORE=both
KEYS=1000000
ROLL=1m
WINDOW=1m
TARGET=envoy
BATCH=1
TIMEOUT=5s
SAMPLE=5s
TOLERANCE_MIB=16
TOLERANCE_PCT=25
PROFILE=release
BUILD=1
OUT=target/soak

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --store) STORE=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --roll) ROLL=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    --sample) SAMPLE=$2; shift 2 ;;
    --target) TARGET=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --tolerance-mib) TOLERANCE_MIB=$2; shift 2 ;;
    --tolerance-pct) TOLERANCE_PCT=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Durations as whole seconds: 90s, 10m, 1h.
seconds() {
  case "$1" in
    *ms) echo "error: $1: use whole seconds" >&2; exit 2 ;;
    *s) echo "${1%s}" ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *h) echo $(( ${1%h} * 3600 )) ;;
    *) echo "$1" ;;
  esac
}
DURATION_S=$(seconds "$DURATION")
WINDOW_S=$(seconds "$WINDOW")
SAMPLE_S=$(seconds "$SAMPLE")
case "$STORE" in
  memory) STORES=(memory) ;;
  redis) STORES=(redis) ;;
  both) STORES=(memory redis) ;;
  *) echo "--store must be memory, redis or both" >&2; exit 2 ;;
esac
case "$PROFILE:$BUILD" in
  release:1) cargo build --release --locked --quiet -p drl --bin drl ;;
  debug:1) cargo build --locked --quiet -p drl --bin drl ;;
  release:0 | debug:0) ;;
  *) echo "--profile must be release or debug" >&2; exit 2 ;;
esac
DRL=${CARGO_TARGET_DIR:-target}/$PROFILE/drl
if [ ! -x "$DRL" ]; then
  echo "$DRL is missing: build it, or run without --no-build" >&2
  exit 2
fi
if [[ " ${STORES[*]} " == *" redis "* ]] && ! command -v redis-server >/dev/null; then
  echo "redis-server is needed for --store redis" >&2
  exit 2
fi

mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
redis_info() { # used_memory keys
  local used keys
  used=$(redis-cli -p "$1" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }')
  keys=$(redis-cli -p "$1" dbsize | tr -d '\r')
  echo "$used $keys"
}

# Starts a node on $1 (a config file); sets NODE_PID and NODE_GRPC.
start_node() {
  local http grpc log=$WORK/node.log
  http=$(free_port)
  grpc=$(free_port)
  "$DRL" serve --config "$1" --http-addr "127.0.0.1:$http" --grpc-addr "127.0.0.1:$grpc" \
    >"$log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  NODE_GRPC=$grpc
  local deadline=$((SECONDS + 60))
  until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$NODE_PID" 2>/dev/null; then
      echo "the node did not become ready; its log:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.2
  done
}

stop_node() {
  kill "$NODE_PID" 2>/dev/null || true
  wait "$NODE_PID" 2>/dev/null || true
}

# One store's soak: load, drain, samples in $OUT/$1.csv.
soak() {
  local store=$1 config=$WORK/$1.yaml csv=$OUT/$1.csv redis_port=""
  {
    if [ "$store" = redis ]; then
      redis_port=$(free_port)
      redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --logfile "$WORK/redis.log" &
      PIDS+=("$!")
      local deadline=$((SECONDS + 30))
      until redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; do
        [ $SECONDS -lt $deadline ] || { echo "redis-server did not start" >&2; exit 1; }
        sleep 0.1
      done
      # A generous command timeout: the machine running this may be busy with other work, and a
      # slow answer is a latency figure here, not an error.
      cat <<EOF
store:
  kind: redis
  redis:
    urls: ["redis://127.0.0.1:$redis_port"]
    cluster: false
    consistency: fast
    on_error: deny
    timeout: 1s
EOF
    fi
    cat <<EOF
default:
  limit: 100
  window: $WINDOW
EOF
  } >"$config"
  start_node "$config"
  local base_rss base_used="" base_keys=""
  base_rss=$(rss_kib "$NODE_PID")
  if [ -n "$redis_port" ]; then
    read -r base_used base_keys < <(redis_info "$redis_port")
  fi
  echo "phase,t_s,rss_kib,redis_used_bytes,redis_keys,requests,decisions,errors,p50_us,p99_us,p999_us,max_us,load1" >"$csv"
  sample() { # phase t [bench json]
    local rss used="" keys="" load json=${3:-}
    rss=$(rss_kib "$NODE_PID")
    if [ -n "$redis_port" ]; then
      read -r used keys < <(redis_info "$redis_port")
    fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    if [ -n "$json" ]; then
      python3 - "$json" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
l = r["latency_us"]
print(f'{r["requests"]},{r["decisions"]},{r["errors"]},{l["p50"]},{l["p99"]},{l["p99_9"]},{l["max"]}', end="")
PY
    else
      printf ',,,,,,'
    fi >"$WORK/bench.csv"
    echo "$1,$2,$rss,$used,$keys,$(cat "$WORK/bench.csv"),$load" >>"$csv"
    LAST_RSS=$rss LAST_USED=$used LAST_KEYS=$keys
    [ "$rss" -le "${PEAK_RSS:-0}" ] || PEAK_RSS=$rss
  }
  PEAK_RSS=0
  sample baseline 0

  echo "== $store: ${DURATION_S} s at $RATE $TARGET requests/s (batch $BATCH) over $KEYS keys rolling every $ROLL (window $WINDOW)" >&2
  local start=$SECONDS t json
  while [ $((SECONDS - start)) -lt "$DURATION_S" ]; do
    local left=$((DURATION_S - (SECONDS - start)))
    local segment=$((left < SAMPLE_S ? left : SAMPLE_S))
    json=$("$DRL" bench --target "$TARGET" --batch "$BATCH" --server "http://127.0.0.1:$NODE_GRPC" \
      --rate "$RATE" --concurrency 128 --keys "$KEYS" --roll "$ROLL" \
      --duration "${segment}s" --timeout "$TIMEOUT" --seed "$((SECONDS))" --json)
    t=$((SECONDS - start))
    sample load "$t" "$json"
    printf '  %4d s  RSS %6d KiB  %s\n' "$t" "$LAST_RSS" \
      "$(tail -1 "$csv" | cut -d, -f6-10 | awk -F, '{ printf "requests %s decisions %s errors %s p50 %.0f µs p99 %.0f µs\n", $1, $2, $3, $4, $5 }')" >&2
  done

  # The load has stopped: poll until memory is back (each key's window has passed, the sweeper
  # and the allocator's collector have run) or the wait runs out.
  local stop=$SECONDS wait_s=$((WINDOW_S + 30))
  while :; do
    sleep 1
    t=$((SECONDS - start))
    sample drain "$t"
    local back=1
    local tolerance=$((TOLERANCE_MIB * 1024 + (PEAK_RSS - base_rss) * TOLERANCE_PCT / 100))
    [ "$LAST_RSS" -le $((base_rss + tolerance)) ] || back=0
    if [ -n "$redis_port" ]; then
      [ "$LAST_KEYS" -le "$base_keys" ] || back=0
      [ "$LAST_USED" -le $((base_used + 4 * 1024 * 1024)) ] || back=0
    fi
    # Keys still inside their window may not be gone yet, whatever memory shows.
    if [ $((SECONDS - stop)) -gt "$WINDOW_S" ] && [ $back = 1 ]; then
      break
    fi
    [ $((SECONDS - stop)) -lt "$wait_s" ] || break
  done
  stop_node
  python3 scripts/soak-report.py "$csv" "$store" "$TOLERANCE_MIB" "$TOLERANCE_PCT"
}

status=0
for store in "${STORES[@]}"; do
  soak "$store" || status=1
done
echo "samples: $OUT/*.csv" >&2
exit $status
