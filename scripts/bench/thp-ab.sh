#!/usr/bin/env bash
# Transparent huge pages in the node, on and off (DRL_ALLOW_THP=1 / unset), alternated: a fresh
# node per run on the memory store, filled with K keys (native batches of 100, sequential), then
# 10 s of native batches uniform over them; prints decisions/s, p99 per batch and RSS per run.
# Loopback only; each node is stopped after its run (builds target/release/drl if missing).
#
#   scripts/bench/thp-ab.sh [KEYS] [ROUNDS]     (default 10000000 keys, 2 rounds)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
# shellcheck source=scripts/bench/common.sh
. "$here/common.sh"
release_drl
keys="${1:-10000000}"
rounds="${2:-2}"
out="$(mktemp -d)"
trap 'stop_server; rm -rf "$out"' EXIT
memory_config thp 60000 90s

for round in $(seq "$rounds"); do
  for thp in 0 1; do
    DRL_ALLOW_THP=$thp start_drl thp
    "$drl" bench --target native --batch 100 --concurrency 8 --server "http://$GRPC" \
      --keys "$keys" --sequential --requests $(((keys + 99) / 100)) --timeout 30s --json > /dev/null
    sleep 3
    rss=$(rss_kib "$server_pid")
    "$drl" bench --duration 10s --target native --batch 100 --concurrency 8 \
      --server "http://$GRPC" --keys "$keys" --json > "$out/run.json"
    python3 - "$out/run.json" "$round" "$thp" "$rss" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"round {sys.argv[2]} DRL_ALLOW_THP={sys.argv[3]}: {d['decisions_per_s']:.0f} decisions/s, "
      f"p99 {d['latency_us']['p99'] / 1000:.2f} ms per batch, RSS {int(sys.argv[4]) // 1024} MiB")
EOF
    stop_server
  done
done
