#!/usr/bin/env bash
# Transparent huge pages in the node, on and off (DRL_ALLOW_THP=1 / unset), alternated: a fresh
# node per run on the memory store, filled with K keys (native batches of 100, sequential), then
# 10 s of native batches uniform over them; prints decisions/s, p99 per batch and RSS per run.
# Loopback only; each node is stopped after its run. Build first: cargo build --release.
#
#   scripts/bench/thp-ab.sh [KEYS] [ROUNDS]     (default 10000000 keys, 2 rounds)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
drl="${CARGO_TARGET_DIR:-$root/target}/release/drl"
keys="${1:-10000000}"
rounds="${2:-2}"
work="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
printf 'store:\n  kind: memory\ndefault:\n  limit: 60000\n  window: 90s\n' > "$work/drl.yaml"

for round in $(seq "$rounds"); do
  for thp in 0 1; do
    RUST_LOG=info DRL_ALLOW_THP=$thp "$drl" serve --config "$work/drl.yaml" \
      --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 2> "$work/node.log" &
    pid=$!
    grpc=""
    for _ in $(seq 100); do
      grpc=$(sed -n 's/.*gRPC listening on \([0-9.:]*\).*/\1/p' "$work/node.log" | head -1)
      [ -n "$grpc" ] && break
      sleep 0.1
    done
    [ -n "$grpc" ] || { cat "$work/node.log" >&2; exit 1; }
    "$drl" bench --target native --batch 100 --concurrency 8 --server "http://$grpc" \
      --keys "$keys" --sequential --requests $(((keys + 99) / 100)) --timeout 30s --json > /dev/null
    sleep 3
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    "$drl" bench --duration 10s --target native --batch 100 --concurrency 8 \
      --server "http://$grpc" --keys "$keys" --json > "$work/run.json"
    python3 - "$work/run.json" "$round" "$thp" "$rss" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"round {sys.argv[2]} DRL_ALLOW_THP={sys.argv[3]}: {d['decisions_per_s']:.0f} decisions/s, "
      f"p99 {d['latency_us']['p99'] / 1000:.2f} ms per batch, RSS {int(sys.argv[4]) // 1024} MiB")
EOF
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=""
  done
done
