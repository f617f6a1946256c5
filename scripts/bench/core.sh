#!/usr/bin/env bash
# Benchmarks of the core crate, with the machine they ran on, written into docs/benchmarks.md.
#
#   scripts/bench.sh core            full run (about 6 minutes on 2 cores, plus compiling);
#                                    updates the bench-core section of docs/benchmarks.md
#   scripts/bench.sh core --quick    smoke run (about 1 minute): short measurements, 100 000 keys
#                                    for the memory table; prints the section, leaves the docs alone
#
# Options: --docs / --no-docs force writing the docs or not; --note "TEXT" adds a note to the
# section (e.g. "the machine was shared with other builds").
#
# What runs: the bench `limiter` (drl and governor interleaved, medians of 3 rounds and the ratio:
# 1 hot key, 100k and 1M keys, 1 and 2 threads; then drl alone on 1k to 10M keys), the criterion
# bench `parts` (the steps of one check), then the `memory` example (bytes per active key, sweep
# cost). Raw output is kept in target/bench-core/.
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh
bench_options 2,13 "$@"
no_extra_options

target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-core"
mkdir -p "$out"
say() { printf '\n== %s\n' "$*" >&2; }

if [ "$quick" = 1 ]; then
  criterion_args=(--warm-up-time 0.3 --measurement-time 1 --sample-size 10)
  limiter_args=(--rounds 1 --seconds 0.3)
  memory_keys=100000
  mode="quick smoke run (short measurements; not for citing)"
else
  criterion_args=()
  limiter_args=(--rounds 3 --seconds 1 --series)
  memory_keys=1000000
  mode="full run"
fi

say "machine"
{
  machine_facts
  echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates/drl-core || echo ' (drl-core modified)')"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "mode=$mode"
  echo "memory_keys=$memory_keys"
  echo "note=$note"
} > "$out/machine.env"
cat "$out/machine.env" >&2

# Results of this run only: criterion keeps older results next to new ones.
touch "$out/started"

say "build"
cargo bench -p drl-core --bench limiter --bench parts --no-run
cargo build --release -p drl-core --example memory

say "bench limiter (drl vs governor)"
cargo bench -p drl-core --bench limiter -- "${limiter_args[@]}" | tee "$out/limiter.log"

say "bench parts (the steps of one check)"
cargo bench -p drl-core --bench parts -- "${criterion_args[@]}" | tee "$out/parts.log"

say "memory per key"
cargo run --release -p drl-core --example memory -- --keys "$memory_keys" | tee "$out/memory.md"

echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.env"

say "report"
python3 scripts/bench/report.py core \
  --criterion "${CRITERION_HOME:-$target/criterion}" \
  --since "$out/started" \
  --machine "$out/machine.env" \
  --limiter "$out/limiter.log" \
  --memory "$out/memory.md" \
  > "$out/section.md"

if [ "$docs" = 1 ]; then
  python3 scripts/bench/report.py splice "$out/section.md" docs/benchmarks.md
  echo "docs/benchmarks.md updated" >&2
else
  cat "$out/section.md"
  echo "(section in $out/section.md; docs/benchmarks.md left alone)" >&2
fi
