#!/usr/bin/env bash
# drl next to its closest peer, Kuadrant Limitador, on Envoy's RateLimitService v3
# (ShouldRateLimit): the same machine, the same run, the servers alternating (their order rotates
# each repetition), a fresh server (and an emptied Redis) for every measurement, medians of the
# repetitions. Written into the bench-peers section of docs/benchmarks.md.
#
#   LIMITADOR_GIT=path/to/limitador(.git) [LIMITADOR_REV=HEAD] scripts/bench.sh peers
#   LIMITADOR_SRC=path/to/limitador-source-tree scripts/bench.sh peers
#
# Limitador is built from the source given (nothing is downloaded but crates from the package
# registry), without its RocksDB disk storage (scripts/bench/peers/limitador-redis-only.patch),
# in target/bench-peers/limitador/; without LIMITADOR_GIT or LIMITADOR_SRC the comparison is
# skipped with a message (exit 0). Needs h2load (nghttp2-client), redis-server, redis-cli, protoc.
#
# Parts (--parts "hot keys correct", all by default), each server on one Redis or in memory:
#   hot      one key, all allowed: h2load -c4 -m32 for --duration (5 s): calls/s, p50/p99, server
#            CPU per call (utime+stime of its process), Redis CPU per call
#   keys     100 000 uniform keys, limit 100 a minute: `drl bench --target envoy --domain perf`
#            with 128 workers for 10 s: calls/s and CPU per call
#   correct  one key, 20 per 10 s, 64 workers for 12 s: the most admissions in any 10 s, by
#            answer time and proven (`drl bench --admission-window 10s`)
# Options: --reps N (3), --duration D (5s), --quick (1 repetition, 2 s, docs left alone),
# --build-only (build both servers and stop: the builds can then stay out of the measuring),
# --docs / --no-docs, --note TEXT. Raw results stay in target/bench-peers/ (raw-PART.jsonl);
# the report reads every part present there. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

bench_options 2,26 "$@"
reps="" duration="" parts="hot keys correct" build_only=0
set -- ${extra[@]+"${extra[@]}"}
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps="${2:?--reps takes a number}"; shift ;;
    --duration) duration="${2:?--duration takes seconds, e.g. 5}"; shift ;;
    --parts) parts="${2:?--parts takes a list such as \"hot keys\"}"; shift ;;
    --build-only) build_only=1 ;;
    *) extra+=("$1") ;;
  esac
  shift
done
no_extra_options
if [ "$quick" = 1 ]; then reps=${reps:-1}; duration=${duration:-2}; else reps=${reps:-3}; duration=${duration:-5}; fi
duration=${duration%s}
for part in $parts; do
  case "$part" in hot|keys|correct) ;; *) echo "unknown part: $part (hot, keys, correct)" >&2; exit 2 ;; esac
done

if [ -z "${LIMITADOR_GIT:-}" ] && [ -z "${LIMITADOR_SRC:-}" ]; then
  echo "peers: skipped: set LIMITADOR_GIT (a clone or bare repository of github.com/Kuadrant/limitador)" \
       "or LIMITADOR_SRC (its source tree) to compare drl with Limitador" >&2
  exit 0
fi
for tool in h2load redis-server redis-cli protoc python3; do
  command -v "$tool" >/dev/null || { echo "peers: $tool is needed (see --help)" >&2; exit 1; }
done

target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-peers"
mkdir -p "$out"
say() { printf '\n== %s\n' "$*" >&2; }

# ---- Limitador: exported from the repository (or copied from the tree), patched, built ----
lim_dir="$out/limitador"
mkdir -p "$lim_dir"
say "Limitador: source"
if [ -n "${LIMITADOR_GIT:-}" ]; then
  rev=$(git -C "$LIMITADOR_GIT" rev-parse "${LIMITADOR_REV:-HEAD}^{commit}")
else
  rev=$(git -C "$LIMITADOR_SRC" rev-parse HEAD 2>/dev/null || echo "unknown (not a git tree)")
fi
# The same commit is exported once (a new export would make cargo rebuild it); a tree without a
# commit is copied every time.
if [ -z "${LIMITADOR_GIT:-}" ] || [ "$(cat "$lim_dir/rev" 2>/dev/null)" != "$rev" ]; then
  rm -rf "$lim_dir/src" "$lim_dir/rev"
  mkdir -p "$lim_dir/src"
  if [ -n "${LIMITADOR_GIT:-}" ]; then
    # Every file whose blob is present (a shallow snapshot may lack large ones).
    files=()
    while IFS= read -r f; do
      git -C "$LIMITADOR_GIT" cat-file -e "$rev:$f" 2>/dev/null && files+=("$f")
    done < <(git -C "$LIMITADOR_GIT" ls-tree -r --name-only "$rev")
    git -C "$LIMITADOR_GIT" archive "$rev" -- "${files[@]}" | tar -x -C "$lim_dir/src"
  else
    tar -C "$LIMITADOR_SRC" --exclude=./target --exclude=./.git -c . | tar -x -C "$lim_dir/src"
  fi
  (cd "$lim_dir/src" && patch -p1 --forward --quiet < "$OLDPWD/scripts/bench/peers/limitador-redis-only.patch")
  [ -z "${LIMITADOR_GIT:-}" ] || echo "$rev" > "$lim_dir/rev"
fi
say "Limitador: build (release, redis_storage only; the first build takes several minutes)"
CARGO_TARGET_DIR="$PWD/$lim_dir/target" cargo build --release -p limitador-server \
  --manifest-path "$lim_dir/src/Cargo.toml" >&2
lim="$lim_dir/target/release/limitador-server"

say "drl: build"
cargo build --release --locked -p drl
drl="$target/release/drl"
drl_rev=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo "+changes")
[ "$build_only" = 0 ] || exit 0
for part in $parts; do rm -f "$out/raw-$part.jsonl"; done   # the parts measured now start afresh

# ---- the machine, the versions ----
{
  machine_facts
  echo "date=$(date -u +%FT%TZ)"
  echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "drl=$("$drl" --version | head -1) at $drl_rev"
  echo "limitador=limitador-server $("$lim" --version 2>&1 | grep -o 'v[0-9][0-9a-z.-]*' | head -1) at ${rev:0:12}"
  echo "redis=$(redis-server --version | sed 's/ sha=.*//')"
  echo "h2load=$(h2load --version | head -1)"
  echo "reps=$reps"
  echo "duration=$duration"
  echo "mode=$([ "$quick" = 1 ] && echo "quick smoke run (not for citing)" || echo "full run")"
} > "$out/machine.env"

# ---- everything started here, stopped on exit ----
pids=()
cleanup() {
  for p in ${pids[@]+"${pids[@]}"}; do
    kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  return 0
}
trap cleanup EXIT INT TERM
freeport() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }   # utime + stime
hz=$(getconf CLK_TCK)

rp=$(freeport)
redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no >"$out/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
wait_port "$rp" || { echo "redis-server did not start" >&2; exit 1; }

# ---- configs: domain / namespace "perf", one descriptor (user_id, endpoint), N per T s ----
config() { # NAME N T
  local d="$out/cfg/$1"
  mkdir -p "$d/drl-mem" "$d/drl-redis"
  printf 'domain: perf\ndescriptors:\n  - key: user_id\n    descriptors:\n      - key: endpoint\n        rate_limit: {window: %ss, requests_per_unit: %s}\n' \
    "$3" "$2" > "$d/drl-mem/perf.yaml"
  cp "$d/drl-mem/perf.yaml" "$d/drl-redis/perf.yaml"
  printf 'store:\n  kind: redis\n  redis:\n    urls: ["redis://127.0.0.1:%s"]\n    cluster: false\n    consistency: fast\n    on_error: deny\n    timeout: 1s\n' \
    "$rp" > "$d/drl-redis/drl.yaml"
  printf -- '- namespace: perf\n  max_value: %s\n  seconds: %s\n  conditions: []\n  variables:\n    - descriptors[0].user_id\n    - descriptors[0].endpoint\n' \
    "$2" "$3" > "$d/limitador.yaml"
}
config hot 1000000 60     # every call allowed (a probe after each run checks it)
config keys 100 60
config correct 20 10

start() { # SERVER CONFIG: sets grpc (port) and spid
  local d="$out/cfg/$2" http
  grpc=$(freeport); http=$(freeport)
  case $1 in
    drl-memory) exec "$drl" serve --config "$d/drl-mem" --http-addr "127.0.0.1:$http" --grpc-addr "127.0.0.1:$grpc" ;;
    drl-redis) exec "$drl" serve --config "$d/drl-redis" --http-addr "127.0.0.1:$http" --grpc-addr "127.0.0.1:$grpc" ;;
    limitador-memory) exec "$lim" -b 127.0.0.1 -p "$grpc" -B 127.0.0.1 -P "$http" "$d/limitador.yaml" memory ;;
    limitador-redis) exec "$lim" -b 127.0.0.1 -p "$grpc" -B 127.0.0.1 -P "$http" "$d/limitador.yaml" redis "redis://127.0.0.1:$rp" ;;
    limitador-redis_cached) exec "$lim" -b 127.0.0.1 -p "$grpc" -B 127.0.0.1 -P "$http" "$d/limitador.yaml" redis_cached "redis://127.0.0.1:$rp" ;;
  esac >>"$out/$1.log" 2>&1 &   # exec: $! is the server itself, whose CPU time is read
  spid=$!
  pids+=("$spid")
  wait_port "$grpc" || { echo "$1 did not start; its log: $out/$1.log" >&2; exit 1; }
  sleep 0.5
}
stop() {
  # SIGTERM, then SIGKILL after 5 s (Limitador redis_cached holding 100 000 keys did not exit
  # on SIGTERM within minutes).
  kill "$spid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  redis-cli -p "$rp" flushall >/dev/null
}
rotate() { local r=$1; shift; local a=("$@") n=$#; for ((i = 0; i < n; i++)); do echo "${a[$(((i + r) % n))]}"; done; }
cpu_json() { # SERVER_TICKS REDIS_TICKS
  echo "{\"server_cpu_s\": $(awk -v t="$1" -v hz="$hz" 'BEGIN {print t / hz}'), \"redis_cpu_s\": $(awk -v t="$2" -v hz="$hz" 'BEGIN {print t / hz}')}"
}
record() { # PART SERVER REP JSON...: one line of raw results
  python3 scripts/bench/report.py peers merge "{\"part\": \"$1\", \"server\": \"$2\", \"rep\": $3, \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" "${@:4}" \
    | tee -a "$out/raw-$1.jsonl" >&2
}

python3 scripts/bench/report.py peers body perf u0 /bench > "$out/body.bin"
path=/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
h2() { h2load "$@" -d "$out/body.bin" -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$grpc$path"; }

hot() { # SERVER REP
  start "$1" hot
  h2 -n 5000 -c 4 -m 32 >/dev/null 2>&1   # warm-up
  local t0 r0 t1 r1
  t0=$(ticks "$spid"); r0=$(ticks "$redis_pid")
  h2 -c 4 -m 32 -D "$duration" --log-file="$out/h2load.log" >"$out/h2load.txt" 2>&1
  t1=$(ticks "$spid"); r1=$(ticks "$redis_pid")
  local probe   # the hot key (drl bench's key 0: u0, /bench) is still allowed: no call was denied
  probe=$("$drl" bench --target envoy --domain perf --server "http://127.0.0.1:$grpc" --hot \
    --concurrency 1 --requests 1 --json 2>/dev/null || echo '{}')
  record hot "$1" "$2" "$(python3 scripts/bench/report.py peers h2load "$out/h2load.txt" "$out/h2load.log")" \
    "$(cpu_json $((t1 - t0)) $((r1 - r0)))" "{\"probe\": $probe}"
  rm -f "$out/h2load.log"
  stop
}

bench_run() { # PART SERVER REP CONFIG BENCH-ARGS...
  local part=$1 server=$2 rep=$3 cfg=$4
  shift 4
  start "$server" "$cfg"
  local t0 r0 t1 r1 json
  t0=$(ticks "$spid"); r0=$(ticks "$redis_pid")
  json=$("$drl" bench --target envoy --domain perf --server "http://127.0.0.1:$grpc" --json --seed "$rep" "$@")
  t1=$(ticks "$spid"); r1=$(ticks "$redis_pid")
  record "$part" "$server" "$rep" "{\"bench\": $json}" "$(cpu_json $((t1 - t0)) $((r1 - r0)))"
  stop
}

servers=(drl-memory limitador-memory drl-redis limitador-redis limitador-redis_cached)
keys_s=10 correct_s=12
[ "$quick" = 1 ] && keys_s=3 correct_s=4
for part in $parts; do
  say "part $part: $reps repetitions, load $(cut -d' ' -f1-3 /proc/loadavg)"
  for rep in $(seq "$reps"); do
    for server in $(rotate "$rep" "${servers[@]}"); do
      case $part in
        hot) hot "$server" "$rep" ;;
        keys) bench_run keys "$server" "$rep" keys --keys 100000 --concurrency 128 --duration "${keys_s}s" ;;
        correct) bench_run correct "$server" "$rep" correct --hot --concurrency 64 --connections 4 \
                   --duration "${correct_s}s" --admission-window 10s ;;
      esac
    done
  done
done
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.env"

section="$out/section.md"
python3 scripts/bench/report.py peers report --out "$out" --note "$note" > "$section"
cat "$section"
if [ "$docs" = 1 ]; then
  python3 scripts/bench/report.py splice "$section" docs/benchmarks.md
  echo "docs/benchmarks.md: bench-peers section updated" >&2
fi
