#!/usr/bin/env bash
# Server benchmarks: `drl bench` against one `drl serve` (memory store) on loopback, with the
# machine they ran on, written into docs/benchmarks.md.
#
#   scripts/bench.sh server            full run (about 3 minutes plus compiling): 10 s per
#                                      scenario; updates the bench-server section of the docs
#   scripts/bench.sh server --quick    smoke run (about 1 minute): 3 s per scenario; prints
#                                      the section, leaves the docs alone
#
# Options: --docs / --no-docs force writing the docs or not; --note "TEXT" adds a note to the
# section; --duration D sets the length of each scenario (e.g. 5s).
#
# Scenarios, on a node whose every pair may make 1 000 000 calls a minute (all allowed): the
# Envoy API closed loop (10 000 uniform keys, then Zipf 1.1 over 1 000 000); the native batch API
# with batches of 1, 100 and 1000; HTTP closed loop; the Envoy API and HTTP open loop at fixed
# rates (latency from the time each call was due). Then, on a node with 10 a minute over 1 000
# keys (nearly all denied): Envoy and native batches of 1000 again. Each run also records the
# CPU time of the server, of the load generator and of the rest of the machine. Raw results are
# kept in target/bench-server/. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

bench_options 2,19 "$@"
duration=""
set -- ${extra[@]+"${extra[@]}"}
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="${2:?--duration takes a time such as 10s}"; shift ;;
    *) extra+=("$1") ;;
  esac
  shift
done
no_extra_options
if [ -z "$duration" ]; then
  if [ "$quick" = 1 ]; then duration=3s; else duration=10s; fi
fi
if [ "$quick" = 1 ]; then
  mode="quick smoke run ($duration per scenario; not for citing)"
else
  mode="full run ($duration per scenario)"
fi

target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-server"
rm -rf "$out"
mkdir -p "$out/runs"
say() { printf '\n== %s\n' "$*" >&2; }

say "build"
cargo build --release --locked -p drl
drl="$target/release/drl"

# The nodes this script starts, stopped on any exit.
server_pid=""
trap stop_server EXIT INT TERM

# start_server NAME LIMIT: a node on free loopback ports; sets GRPC and HTTP.
start_server() {
  local name=$1 limit=$2
  cat > "$out/$name.yaml" <<EOF
store:
  kind: memory
default:
  limit: $limit
  window: 1m
EOF
  start_drl "$name"
}

# scenario NAME "TITLE" "CONFIG" BENCH-ARGS...: one `drl bench` run, recorded.
scenario() {
  local name=$1 title=$2 config=$3
  shift 3
  say "$title ($config)"
  python3 scripts/bench/report.py server run --server-pid "$server_pid" \
    --out "$out/runs/$name.json" -- "$drl" bench --duration "$duration" "$@"
  printf '%s\t%s\t%s\n' "$name" "$title" "$config" >> "$out/runs/runs.list"
}

say "machine"
{
  machine_facts
  echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (crates modified)')"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "mode=$mode"
  echo "note=$note"
} > "$out/machine.env"
cat "$out/machine.env" >&2

high="high limit"
start_server high 1000000
scenario envoy-closed "Envoy ShouldRateLimit, closed loop, 64 workers, 2 connections" "$high" \
  --target envoy --server "http://$GRPC" --concurrency 64 --keys 10000
scenario native-1 "native Check, batch 1, closed loop, 64 workers" "$high" \
  --target native --server "http://$GRPC" --concurrency 64 --batch 1 --keys 10000
scenario native-100 "native Check, batch 100, closed loop, 16 workers" "$high" \
  --target native --server "http://$GRPC" --concurrency 16 --batch 100 --keys 10000
scenario native-1000 "native Check, batch 1000, closed loop, 4 workers" "$high" \
  --target native --server "http://$GRPC" --concurrency 4 --batch 1000 --keys 10000
scenario http-closed "HTTP POST /v1/check, closed loop, 32 connections" "$high" \
  --target http --server "http://$HTTP" --concurrency 32 --keys 10000
scenario envoy-zipf "Envoy ShouldRateLimit, closed loop, Zipf 1.1 over 1M keys" "$high" \
  --target envoy --server "http://$GRPC" --concurrency 64 --keys 1000000 --zipf 1.1
scenario envoy-open-10k "Envoy ShouldRateLimit, open loop, 10 000/s" "$high" \
  --target envoy --server "http://$GRPC" --concurrency 256 --rate 10000 --keys 10000
scenario envoy-open-20k "Envoy ShouldRateLimit, open loop, 20 000/s" "$high" \
  --target envoy --server "http://$GRPC" --concurrency 256 --rate 20000 --keys 10000
scenario http-open-20k "HTTP POST /v1/check, open loop, 20 000/s" "$high" \
  --target http --server "http://$HTTP" --concurrency 64 --rate 20000 --keys 10000
stop_server

low="low limit"
start_server low 10
scenario envoy-closed-low "Envoy ShouldRateLimit, closed loop, 64 workers, 1 000 keys" "$low" \
  --target envoy --server "http://$GRPC" --concurrency 64 --keys 1000
scenario native-1000-low "native Check, batch 1000, closed loop, 4 workers, 1 000 keys" "$low" \
  --target native --server "http://$GRPC" --concurrency 4 --batch 1000 --keys 1000
stop_server

echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.env"

say "report"
python3 scripts/bench/report.py server report --machine "$out/machine.env" --runs "$out/runs" \
  > "$out/section.md"
if [ "$docs" = 1 ]; then
  python3 scripts/bench/report.py splice "$out/section.md" docs/benchmarks.md
  echo "docs/benchmarks.md updated" >&2
else
  cat "$out/section.md"
  echo "(section in $out/section.md; docs/benchmarks.md left alone)" >&2
fi
