#!/usr/bin/env bash
# One hot key through one node, with and without leases (issue 14, docs/hot-keys.md).
#
#   [DRL=path/to/drl] scripts/bench/hotkey.sh [--runs N] [--duration S] [--out DIR]
#
# One redis-server on a free loopback port; one `drl serve` on it (consistency: fast) whose
# default limit is 1 000 000 per minute (sliding_window); `drl bench --target native --hot`
# (batches of 100 checks of the one key, 16 workers): for S seconds without leases (default 2),
# and for 8 000 requests (800 000 checks, below the limit) with them, so that every decision
# measured is an admission (past the limit both would be denials the deny cache answers, at the
# same speed). Each round runs the node without leases, then with
# `leases: {threshold: 1000, max_fraction: 0.1}`, on a flushed Redis (alternated, so a busy
# machine weighs on both alike). Prints per run: decisions/s, admitted, Redis script calls
# (INFO commandstats: evalsha + eval) per decision; then the medians and the ratio of
# decisions/s with leases over without. Needs redis-server, redis-cli, python3 and a release
# build of drl (built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/common.sh

runs=3
duration=2
out=target/bench/hotkey
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--duration S] [--out DIR]" >&2; exit 2 ;;
  esac
done
need redis-server redis-cli python3
release_drl
mkdir -p "$out"
out=$(cd "$out" && pwd)

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
  > "$out/redis.log" 2>&1 &
redis_pid=$!
server_pid=""
cleanup() {
  stop_server
  kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

for mode in plain leases; do
  {
    echo "store:"
    echo "  kind: redis"
    echo "  redis:"
    echo "    urls: [\"redis://127.0.0.1:$port\"]"
    echo "    consistency: fast"
    if [ "$mode" = leases ]; then
      echo "    leases: {threshold: 1000, max_fraction: 0.1}"
    fi
    echo "default:"
    echo "  limit: 1000000"
    echo "  window: 1m"
    echo "  algorithm: sliding_window"
  } > "$out/$mode.yaml"
done

# Script calls Redis has run so far.
script_calls() {
  redis-cli -p "$port" info commandstats | tr -d '\r' |
    awk -F'[=,]' '/^cmdstat_(evalsha|eval):/ {n += $2} END {print n + 0}'
}

echo -e "run\tmode\tdecisions_per_s\tadmitted\tredis_calls_per_decision" | tee "$out/runs.tsv"
for round in $(seq "$runs"); do
  for mode in plain leases; do
    redis-cli -p "$port" flushall >/dev/null
    start_drl "$mode"
    c0=$(script_calls)
    length=(--duration "${duration}s")
    [ "$mode" = leases ] && length=(--requests 8000)
    "$drl" bench --target native --server "http://$GRPC" --concurrency 16 --batch 100 --hot \
      "${length[@]}" --json > "$out/$mode-$round.json"
    c1=$(script_calls)
    stop_server
    python3 - "$out/$mode-$round.json" "$round" "$mode" "$c0" "$c1" <<'EOF' | tee -a "$out/runs.tsv"
import json, sys
r = json.load(open(sys.argv[1]))
calls = int(sys.argv[5]) - int(sys.argv[4])
if r["allowed"] != r["decisions"]:
    sys.exit(f"{sys.argv[3]}: {r['decisions'] - r['allowed']} of {r['decisions']} not admitted")
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{r['decisions_per_s']:.0f}\t{r['allowed']}\t"
      f"{calls / max(r['decisions'], 1):.4f}")
EOF
  done
done
python3 - "$out/runs.tsv" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = {}
for mode in ("plain", "leases"):
    runs = [r for r in rows if r["mode"] == mode]
    med[mode] = {k: statistics.median(float(r[k]) for r in runs)
                 for k in ("decisions_per_s", "redis_calls_per_decision")}
    print(f"median {mode}: {med[mode]['decisions_per_s']:.0f} decisions/s, "
          f"{med[mode]['redis_calls_per_decision']:.4f} Redis calls per decision")
print(f"leases / plain decisions/s: "
      f"{med['leases']['decisions_per_s'] / med['plain']['decisions_per_s']:.1f}x")
EOF
