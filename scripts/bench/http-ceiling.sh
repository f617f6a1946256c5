#!/usr/bin/env bash
# HTTP `POST /v1/check` against the machine's loopback request ceiling (issue 17), in one run:
# wrk (2 threads, 64 connections, 100 000 users drawn uniformly) on one `drl serve` with the
# memory store, alternated with redis-benchmark PING (64 clients) on a redis-server of its own;
# ROUNDS rounds (3 by default), each system DURATION seconds (5 by default) per round. Prints
# each round, the medians, the ratio of the medians, and the node's CPU per request (from
# /proc: user + system time over the requests wrk completed). Raw outputs in
# target/bench/http-ceiling/. Everything started here is stopped on exit.
#
#   scripts/bench/http-ceiling.sh [ROUNDS] [DURATION]
#   DRL=path/to/drl ...                    measures another build of drl
#   PERF=1 scripts/bench/http-ceiling.sh   also records the node under wrk (perf record -g)
#                                          in target/bench/http-ceiling/perf-ROUND.data
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

rounds=${1:-3}
duration=${2:-5}
need redis-server redis-benchmark wrk python3
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench/http-ceiling"
rm -rf "$out"
mkdir -p "$out"
release_drl

server_pid="" redis_pid=""
cleanup() {
  stop_server
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  > "$out/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$redis_port" ping > /dev/null 2>&1 && break; sleep 0.1; done

cat > "$out/node.yaml" <<EOF
store:
  kind: memory
default:
  limit: 1000000
  window: 1m
EOF
start_drl node
# wrk's requests: POST /v1/check for one of 100 000 users, drawn uniformly.
cp scripts/bench/wrk-check.lua "$out/check.lua"

# cpu_ticks (common.sh) counts clock ticks: CLK_TCK of them a second.
hz=$(getconf CLK_TCK)
ping_n=$((duration * 60000))

echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg) commit=$(git rev-parse --short HEAD)" | tee "$out/machine.env"
printf 'round\tPING/s\tHTTP check/s\tratio\tnode CPU µs/check\n' | tee "$out/rounds.tsv"
for round in $(seq "$rounds"); do
  redis-benchmark -p "$redis_port" -c 64 -n "$ping_n" --csv -t ping_mbulk > "$out/ping-$round.csv"
  ping=$(awk -F'"' '/PING_MBULK/ {print $4}' "$out/ping-$round.csv")
  before=$(cpu_ticks "$server_pid")
  perf_pid=""
  if [ "${PERF:-0}" = 1 ]; then
    perf record -g -o "$out/perf-$round.data" -p "$server_pid" -- sleep "$duration" \
      > /dev/null 2>&1 &
    perf_pid=$!
  fi
  wrk -t 2 -c 64 -d "${duration}s" -s "$out/check.lua" "http://$HTTP" > "$out/wrk-$round.txt"
  if [ -n "$perf_pid" ]; then wait "$perf_pid" || true; fi
  after=$(cpu_ticks "$server_pid")
  total=$(awk '/requests in/ {print $1}' "$out/wrk-$round.txt")
  rps=$(awk '/^Requests\/sec/ {print $2}' "$out/wrk-$round.txt")
  if grep -q Non-2xx "$out/wrk-$round.txt"; then
    echo "wrk saw non-2xx answers:" >&2; cat "$out/wrk-$round.txt" >&2; exit 1
  fi
  python3 - "$round" "$ping" "$rps" "$before" "$after" "$hz" "$total" <<'EOF' | tee -a "$out/rounds.tsv"
import sys
r, ping, rps, before, after, hz, total = sys.argv[1:]
cpu_us = (int(after) - int(before)) / int(hz) * 1e6 / int(total)
print(f"{r}\t{float(ping):.0f}\t{float(rps):.0f}\t{float(rps) / float(ping):.2f}\t{cpu_us:.1f}")
EOF
done
echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.env"
python3 - "$out/rounds.tsv" <<'EOF'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()[1:]]
med = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"medians: PING {med(1):.0f}/s, HTTP check {med(2):.0f}/s, ratio of medians "
      f"{med(2) / med(1):.2f}, median of round ratios {med(3):.2f}, node CPU {med(4):.1f} µs/check")
EOF
