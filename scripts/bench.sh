#!/usr/bin/env bash
# The benchmark suite's one entry point. Each sub-command builds what it needs in release mode,
# starts on loopback what it measures (stopped on exit), records the machine, and writes its
# generated section of docs/benchmarks.md through the one report script (scripts/bench/report.py).
# Not part of the test command: CI does not run benchmarks.
#
#   scripts/bench.sh [all]    the suite: one node on the memory store (Envoy, native batch, HTTP,
#                             a profile), the key-count series (1k to 10M keys: decisions/s, p99,
#                             RSS before and after the sweep), a local Redis Cluster (fast, strict),
#                             the scripts against the sorted-set log, and the distributed path
#                             (scripts/bench/suite.sh; about 8 minutes plus compiling)
#   scripts/bench.sh core     the embedded limiter against governor, the key series of the core,
#                             the parts of one check, memory per key (scripts/bench/core.sh)
#   scripts/bench.sh server   `drl bench` scenarios against one node on the memory store,
#                             closed and open loop, with CPU per call (scripts/bench/server.sh)
#   scripts/bench.sh redis    the Redis side alone: every algorithm's script next to the sorted-set
#                             log (scripts/bench/redis-scripts.sh), then wrk and native batches
#                             through one node on a cluster against it (scripts/bench/redis-path.sh);
#                             tables in target/bench-scripts/ and target/bench/redis-path/; then
#                             one hot key through one node with and without leases
#                             (scripts/bench/hotkey.sh, target/bench/hotkey/)
#   scripts/bench.sh edge     the node's front doors on the memory store: HTTP /v1/check against
#                             the loopback ceiling (scripts/bench/http-ceiling.sh) and the Envoy
#                             API's p99 at half its maximum (scripts/bench/envoy-latency.sh);
#                             tables on stdout, raw rows in target/bench/
#   scripts/bench.sh peers    drl next to Kuadrant Limitador on Envoy's RateLimitService, built
#                             from LIMITADOR_GIT or LIMITADOR_SRC (skipped without them):
#                             throughput, CPU per call, over-admission (scripts/bench/peers.sh)
#
# Options after the sub-command go to it: --quick (a smoke run, the docs left alone), --docs /
# --no-docs, --note "TEXT"; `scripts/bench.sh SUB --help` lists them. On 2 shared cores compare
# only ratios measured in one run, and never measure while anything builds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

sub="${1:-all}"
case "$sub" in
  -h|--help|help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) sub=all ;;
  *) shift ;;
esac

case "$sub" in
  all) exec "$here/bench/suite.sh" "$@" ;;
  core) exec "$here/bench/core.sh" "$@" ;;
  server) exec "$here/bench/server.sh" "$@" ;;
  peers) exec "$here/bench/peers.sh" "$@" ;;
  edge)
    if [ "${1:-}" = --quick ]; then
      "$here/bench/http-ceiling.sh" 1 2
      exec "$here/bench/envoy-latency.sh" 1 3
    fi
    "$here/bench/http-ceiling.sh"
    exec "$here/bench/envoy-latency.sh"
    ;;
  redis)
    quick=()
    for arg in "$@"; do [ "$arg" = --quick ] && quick=(--quick); done
    "$here/bench/redis-scripts.sh" "$@"
    if [ ${#quick[@]} -gt 0 ]; then
      "$here/bench/redis-path.sh" --runs 1 --duration 3
      exec "$here/bench/hotkey.sh" --runs 1
    fi
    "$here/bench/redis-path.sh"
    exec "$here/bench/hotkey.sh"
    ;;
  *) echo "unknown sub-command: $sub (all, core, server, redis, edge, peers; see --help)" >&2; exit 2 ;;
esac
