#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer) for a bounded time each, then prints
# how long each ran, how many inputs it executed and what it found. Not part of scripts/test.sh
# or CI: the seed corpora and the regression inputs are replayed by the ordinary tests
# (crates/drl-testkit/tests/fuzz_regressions.rs). See docs/testing.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer needs nightly compiler flags; on the
# stable toolchain RUSTC_BOOTSTRAP=1 allows them. New inputs go to fuzz/work/<target>/ (not
# checked in), failing ones to fuzz/artifacts/<target>/; a target stops at its first failure.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift $(($# > 0 ? 1 : 0))
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
  exit 2
fi
export RUSTC_BOOTSTRAP=1
# No sanitizer: the crates forbid unsafe code, and without ASan a run executes several times
# more inputs. Debug assertions on, so an arithmetic overflow is a finding.
flags=(--sanitizer none --debug-assertions)

if (($# > 0)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${#targets[@]} fuzz targets"
cargo fuzz build "${flags[@]}" || exit 1

summary=()
failed=0
for target in "${targets[@]}"; do
  mkdir -p "fuzz/work/$target" "fuzz/artifacts/$target"
  log="fuzz/work/$target.log"
  before=$(find "fuzz/artifacts/$target" -type f | wc -l)
  echo "== $target: ${seconds}s (log: $log)"
  start=$(date +%s)
  cargo fuzz run "${flags[@]}" "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1
  status=$?
  # libFuzzer's own count of its running time; the wall time when it stopped at a failure.
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o '[0-9]* second' | grep -o '[0-9]*')
  took=${took:-$(($(date +%s) - start))}
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(find "fuzz/work/$target" -type f | wc -l)
  found=$(($(find "fuzz/artifacts/$target" -type f | wc -l) - before))
  if ((status != 0 || found > 0)); then
    failed=1
    newest=$(ls -t "fuzz/artifacts/$target" 2>/dev/null | head -1)
    result="FAILED (exit $status): fuzz/artifacts/$target/$newest"
    grep -m1 -E 'panicked at|ERROR: libFuzzer' -A2 "$log" | sed 's/^/    /'
  else
    result="no failure"
  fi
  summary+=("$(printf '%-16s %5ss %10s runs %6s in corpus  %s' "$target" "$took" "${runs:-?}" "$corpus" "$result")")
done

echo
echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if ((failed)); then
  echo
  echo "Reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} TARGET ARTIFACT"
  echo "Fix it, then add the input to fuzz/regressions/TARGET/ (replayed by cargo test)."
  exit 1
fi
