#!/usr/bin/env bash
# drl's Redis scripts alone, straight from redis-benchmark, next to the textbook sorted-set
# sliding log (TIME, ZREMRANGEBYSCORE, ZCARD, ZADD, PEXPIRE): limit 100 per 60 s, 64 clients,
# random keys, one call in flight per client. Each algorithm's single-check script, and the
# sliding window through the many-checks call (16 checks per call, per-master batching's unit),
# on random keys and on one hot key (a call's one-hit checks of one key are decided as one).
#
#   scripts/bench/redis-scripts.sh [--quick] [--rounds R] [--cluster-port PORT] [--out DIR]
#
# Targets: a single redis-server, and a Redis Cluster of 3 masters with 1 replica each
# (scripts/redis-cluster.sh). Both are started here on free loopback ports and stopped on exit,
# unless --cluster-port names a running cluster to use (scripts/bench.sh redis passes its own).
# Every run starts from empty masters (FLUSHALL). Per round the scripts run one after another on
# the same target, the two targets alternate; the table gives medians over the rounds (default
# 3): calls/s, decisions/s, Redis CPU per decision (INFO cpu used_cpu_sys + used_cpu_user of
# every master, after minus before, ÷ decisions; includes what a master spends feeding its
# replica), and each figure's ratio to the sorted-set log's in the same round (median of the
# per-round ratios). Raw rows go to DIR/scripts.tsv (default target/bench-scripts).
set -euo pipefail
cd "$(dirname "$0")/../.."

quick=0
rounds=3
cluster_port=""
out="${CARGO_TARGET_DIR:-target}/bench-scripts"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --rounds) rounds="${2:?--rounds takes a number}"; shift ;;
    --cluster-port) cluster_port="${2:?--cluster-port takes a port}"; shift ;;
    --out) out="${2:?--out takes a directory}"; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for tool in redis-server redis-cli redis-benchmark python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed (apt-get install redis-server redis-tools python3)" >&2; exit 1; }
done
calls=200000
[ "$quick" = 1 ] && calls=40000
batch=16
mkdir -p "$out"
rm -f "$out/scripts.tsv"

# --- targets: what this script starts is stopped on exit -------------------------------------
free_port() {
  python3 -c 'import socket
for p in range(int(__import__("sys").argv[1]), 30000):
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError: pass' "$1"
}
single_dir=$(mktemp -d)
single_port=$(free_port 18600)
own_cluster=0
cluster_dir="$single_dir/cluster"
cleanup() {
  if [ -f "$single_dir/redis.pid" ]; then
    local pid
    pid=$(cat "$single_dir/redis.pid")
    kill "$pid" 2>/dev/null || true
    # Until it has exited: a server shutting down still writes its log into the directory,
    # which made the removal below fail ("Directory not empty") and with it the whole suite.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ "$own_cluster" = 1 ]; then
    BASE_PORT=$cluster_port REPLICAS=1 DRL_CLUSTER_DIR="$cluster_dir" scripts/redis-cluster.sh down >/dev/null || true
  fi
  rm -rf "$single_dir" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
redis-server --port "$single_port" --bind 127.0.0.1 --dir "$single_dir" --daemonize yes \
  --pidfile "$single_dir/redis.pid" --logfile "$single_dir/redis.log" --save "" --appendonly no \
  --maxmemory-policy noeviction
until redis-cli -p "$single_port" ping >/dev/null 2>&1; do sleep 0.1; done
if [ -z "$cluster_port" ]; then
  cluster_port=$(free_port 18700)
  own_cluster=1
  BASE_PORT=$cluster_port REPLICAS=1 DRL_CLUSTER_DIR="$cluster_dir" scripts/redis-cluster.sh up >/dev/null
fi
masters() { # PORT: the master ports of the target on PORT (itself for a single server)
  if [ "$1" = "$single_port" ]; then echo "$1"; return; fi
  redis-cli -p "$1" cluster nodes | awk '/master/ && !/fail/ { split($2, a, "[:@]"); print a[2] }'
}

# --- the scripts, assembled as crates/drl-redis/src/scripts.rs does ---------------------------
lua=crates/drl-redis/src/lua
single_script() { # ALGORITHM
  printf '#!lua\n'; cat "$lua/prelude.lua"; echo; cat "$lua/$1.lua"; echo
  sed "s/STEP/$1/g" "$lua/single.lua"
}
single_script sliding_window > "$out/sliding_window.lua"
single_script sliding_log > "$out/sliding_log.lua"
single_script fixed_window > "$out/fixed_window.lua"
single_script token_bucket > "$out/token_bucket.lua"
{ printf '#!lua flags=allow-cross-slot-keys\n'; cat "$lua/prelude.lua"; echo
  for a in sliding_window sliding_log fixed_window token_bucket; do cat "$lua/$a.lua"; echo; done
  cat "$lua/many.lua"; } > "$out/many.lua"
# The baseline every Redis comparison uses: scripts/baselines/zset-sliding-log.lua.
cp scripts/baselines/zset-sliding-log.lua "$out/zset.lua"
declare -A sha
for port in "$single_port" "$cluster_port"; do
  for m in $(masters "$port"); do
    for s in zset sliding_window sliding_log fixed_window token_bucket many; do
      sha[$s]=$(redis-cli -p "$m" -x script load < "$out/$s.lua")
    done
  done
done

# What drl sends for `limit: 100, window: 1m` (Policy in drl-core, scripts::call in drl-redis):
# '' (server clock), hits 1, N, T in ns, then the algorithm's parameters: the sliding window's
# bucket width (1 s at the default precision 60), 61 ring slots, T mod width 0; the token
# bucket's emission interval 0.6 s and burst 100.
common="'' 1 100 60000000000"
declare -A args letter
args[sliding_window]="$common 1000000000 61 0"; letter[sliding_window]=W
args[sliding_log]="$common '' '' ''"; letter[sliding_log]=l
args[fixed_window]="$common '' '' ''"; letter[fixed_window]=F
args[token_bucket]="$common 600000000 100 ''"; letter[token_bucket]=T

# The command line of SCRIPT on TARGET (its keys: a random part, and redis-benchmark's {tag},
# which it rewrites to a slot of the node a client talks to, in cluster mode).
command_for() {
  local script=$1 key
  if [ "$2" = single ]; then key='{__rand_int__}'; else key='{tag}:__rand_int__'; fi
  case "$script" in
    zset) echo "EVALSHA ${sha[zset]} 1 'rl:$key' 60000 100 __rand_int__" ;;
    many)
      # No repeated key (''), one policy (w, N, T, its parameters), then per check: key,
      # policy number 1, hits 1.
      local line="EVALSHA ${sha[many]} 1 'drl:W$key' '' '' 1 w 100 60000000000 1000000000 61 0" i
      for i in $(seq "$batch"); do line="$line 'drl:W$key' 1 1"; done
      # In cluster mode every check of a call shares the client's {tag}: one node serves them.
      echo "$line" ;;
    many_hot)
      # One hot key: every check of a call on one key, limit 1 000 000 a minute (never reached):
      # the one-hit checks of a key that many.lua decides as one.
      if [ "$2" = single ]; then key='{hot}'; else key='{tag}:hot'; fi
      local line="EVALSHA ${sha[many]} 1 'drl:W$key' '' r 1 w 1000000 60000000000 1000000000 61 0" i
      for i in $(seq "$batch"); do line="$line 'drl:W$key' 1 1"; done
      echo "$line" ;;
    *) echo "EVALSHA ${sha[$script]} 1 'drl:${letter[$script]}$key' ${args[$script]}" ;;
  esac
}

cpu_sum() { # PORT: used_cpu_sys + used_cpu_user summed over the target's masters, in seconds
  local total=0 m v
  for m in $(masters "$1"); do
    v=$(redis-cli -p "$m" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ { t += $2 } END { printf "%.6f", t }')
    total=$(echo "$total + $v" | bc -l)
  done
  echo "$total"
}

run() { # TARGET PORT SCRIPT ROUND
  local target=$1 port=$2 script=$3 round=$4 cluster="" m before after line rps per
  [ "$target" = cluster ] && cluster=--cluster
  for m in $(masters "$port"); do redis-cli -p "$m" flushall >/dev/null; done
  before=$(cpu_sum "$port")
  line=$(eval redis-benchmark -p "$port" $cluster -c 64 -r 10000 -n "$calls" --csv \
    "$(command_for "$script" "$target")" 2>/dev/null | tail -1)
  after=$(cpu_sum "$port")
  rps=$(echo "$line" | cut -d, -f2 | tr -d '"')
  per=1
  case "$script" in many*) per=$batch ;; esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$script" "$round" "$rps" "$per" \
    "$(echo "($after - $before) * 1000000 / ($calls * $per)" | bc -l)" >> "$out/scripts.tsv"
  printf '  %-8s %-15s round %s: %9.0f calls/s\n' "$target" "$script" "$round" "$rps" >&2
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores" >&2
for round in $(seq "$rounds"); do
  for target in single cluster; do
    port=$single_port
    [ "$target" = cluster ] && port=$cluster_port
    for script in zset sliding_window sliding_log fixed_window token_bucket many many_hot; do
      run "$target" "$port" "$script" "$round"
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
printf '%s\n' "$(command_for sliding_window cluster)" > "$out/commands.txt"
printf '%s\n' "$(command_for zset cluster)" >> "$out/commands.txt"

python3 - "$out/scripts.tsv" "$batch" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
batch = sys.argv[2]
by = {}
for target, script, rnd, rps, per, cpu in rows:
    by[(target, script, rnd)] = (float(rps), float(rps) * int(per), float(cpu))
names = {
    "zset": "sorted-set log (textbook)",
    "sliding_window": "drl sliding_window",
    "sliding_log": "drl sliding_log",
    "fixed_window": "drl fixed_window",
    "token_bucket": "drl token_bucket",
    "many": f"drl sliding_window, {batch} checks per call",
    "many_hot": f"drl sliding_window, {batch} checks of one hot key per call",
}
med = statistics.median
for target in ("single", "cluster"):
    rounds = sorted({r for (t, _, r) in by if t == target})
    print(f"\n{target}: medians of {len(rounds)} rounds")
    print("| script | calls/s | decisions/s | × zset decisions/s | Redis CPU µs/decision | × zset CPU |")
    print("|---|---|---|---|---|---|")
    for script, name in names.items():
        got = [by[(target, script, r)] for r in rounds if (target, script, r) in by]
        base = [by[(target, "zset", r)] for r in rounds if (target, script, r) in by]
        if not got:
            continue
        ratio = med(g[1] / b[1] for g, b in zip(got, base))
        cpu_ratio = med(g[2] / b[2] for g, b in zip(got, base))
        print(f"| {name} | {med(g[0] for g in got):,.0f} | {med(g[1] for g in got):,.0f} | "
              f"{ratio:.2f}× | {med(g[2] for g in got):.2f} | {cpu_ratio:.2f}× |")
EOF
