#!/usr/bin/env bash
# Envoy API latency at half its maximum throughput (issue 17's goal: p99 <= 2 ms): one
# `drl serve` (memory store, domain `perf`, one descriptor user_id + endpoint, 1 000 000 a
# minute: every call allowed), driven by h2load with one ShouldRateLimit request. Each round: the
# maximum (h2load -c 4 -m 32 for DURATION s), then an open loop at half of it (h2load -c 4 -m 32
# --rps maximum/8 per client, the same DURATION), p50 and p99 from h2load's per-request log.
# One server throughout; the rounds give the spread, and the medians are printed.
#
#   scripts/bench/envoy-latency.sh [ROUNDS (3)] [DURATION (10)]
#
# DRL=path measures another build. Needs h2load (nghttp2-client) and python3. h2load shares
# the machine's cores with the node, so the p99 includes queueing behind the generator.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

rounds=${1:-3}
duration=${2:-10}
need h2load python3
release_drl
out="${CARGO_TARGET_DIR:-target}/bench/envoy-latency"
rm -rf "$out"
mkdir -p "$out/rules"
printf 'domain: perf\ndescriptors:\n  - key: user_id\n    descriptors:\n      - key: endpoint\n        rate_limit: {window: 60s, requests_per_unit: 1000000}\n' \
  > "$out/rules/perf.yaml"
python3 scripts/bench/report.py peers body perf u0 /bench > "$out/body.bin"
server_pid=""
trap stop_server EXIT
RUST_LOG=info "$drl" serve --config "$out/rules" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
  2> "$out/node.log" &
server_pid=$!
GRPC=""
for _ in $(seq 300); do
  GRPC=$(sed -n 's/.*gRPC listening on \([0-9.:]*\).*/\1/p' "$out/node.log" | head -1)
  [ -n "$GRPC" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$out/node.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$GRPC" ] || { echo "drl serve did not report its gRPC address" >&2; cat "$out/node.log" >&2; exit 1; }
h2() {
  h2load "$@" -d "$out/body.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$GRPC/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
}
h2 -n 5000 -c 4 -m 32 >/dev/null 2>&1   # warm-up
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores" >&2
rows="$out/rows.jsonl"
for round in $(seq "$rounds"); do
  h2 -c 4 -m 32 -D "$duration" --log-file="$out/max.log" > "$out/max.txt" 2>&1
  max=$(python3 scripts/bench/report.py peers h2load "$out/max.txt" "$out/max.log")
  rps=$(python3 -c 'import json, sys; print(max(1, int(json.loads(sys.argv[1])["calls_per_s"] / 2 / 4)))' "$max")
  h2 -c 4 -m 32 --rps "$rps" -D "$duration" --log-file="$out/half.log" > "$out/half.txt" 2>&1
  half=$(python3 scripts/bench/report.py peers h2load "$out/half.txt" "$out/half.log")
  echo "{\"round\": $round, \"max\": $max, \"rps_per_client\": $rps, \"half\": $half}" | tee -a "$rows" >&2
  rm -f "$out/max.log" "$out/half.log"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$rows" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
med = lambda xs: statistics.median(xs)  # noqa: E731
print("| round | maximum calls/s | p99 at the maximum, ms | offered calls/s (half) | achieved | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['round']} | {r['max']['calls_per_s']:,.0f} | {r['max']['p99_ms']:.2f} | {4 * r['rps_per_client']:,} "
          f"| {r['half']['calls_per_s']:,.0f} | {r['half']['p50_ms']:.2f} | {r['half']['p99_ms']:.2f} |")
p99 = med([r["half"]["p99_ms"] for r in rows])
print(f"\nmedian p99 at half the maximum: {p99:.2f} ms (goal <= 2 ms: {'met' if p99 <= 2 else 'missed'}); "
      f"median maximum {med([r['max']['calls_per_s'] for r in rows]):,.0f} calls/s")
PY
