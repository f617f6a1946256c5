#!/usr/bin/env bash
# A local Redis Cluster for drl: 3 masters with REPLICAS replicas each (default 2, so a promoted
# master still has a replica for strict mode's WAIT), on loopback ports from BASE_PORT (default
# 7000), from Debian's redis-server (installed with apt-get when missing).
#
#   scripts/redis-cluster.sh up | down | status
#
# Settings suited to a limiter: cluster-node-timeout 2000 ms (fast failover),
# cluster-require-full-coverage no (a failed shard does not stop the others), appendonly yes
# (a restarted master does not come back empty and wipe its replicas), noeviction (an evicted
# counter would reset a limit). APPENDFSYNC (default everysec) is Redis's appendfsync: `always`
# is the setting for a strict limiter (a restart loses nothing that was answered); `everysec`,
# cheaper, can lose up to ~2 s of answered writes even on kill -9 when the disk is busy
# (docs/redis.md, Persistence). The default stays everysec: this is a local cluster for
# development, the demos and the benchmarks, whose figures were measured with it. State lives in ${DRL_CLUSTER_DIR:-/tmp/drl-redis-cluster};
# `down` stops every process that `up` started (by the pid files there) and removes it.
set -euo pipefail

BASE_PORT=${BASE_PORT:-7000}
REPLICAS=${REPLICAS:-2}
APPENDFSYNC=${APPENDFSYNC:-everysec}
case "$APPENDFSYNC" in
  always | everysec | no) ;;
  *) echo "APPENDFSYNC must be always, everysec or no, not '$APPENDFSYNC'" >&2; exit 2 ;;
esac
DIR=${DRL_CLUSTER_DIR:-/tmp/drl-redis-cluster}
COUNT=$((3 * (1 + REPLICAS)))

ports() { seq "$BASE_PORT" $((BASE_PORT + COUNT - 1)); }

need_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
  fi
}

up() {
  need_redis
  if [ -d "$DIR" ]; then
    echo "$DIR exists: run '$0 down' first" >&2
    exit 1
  fi
  for port in $(ports); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
      echo "port $port is in use" >&2
      exit 1
    fi
  done
  for port in $(ports); do
    mkdir -p "$DIR/$port"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$DIR/$port" --daemonize yes \
      --pidfile "$DIR/$port/redis.pid" --logfile "$DIR/$port/redis.log" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --cluster-require-full-coverage no --appendonly yes --appendfsync "$APPENDFSYNC" \
      --maxmemory-policy noeviction --save ""
  done
  for port in $(ports); do
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
  done
  addrs=()
  for port in $(ports); do addrs+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$REPLICAS" --cluster-yes >/dev/null
  until redis-cli -p "$BASE_PORT" cluster info | grep -q cluster_state:ok; do sleep 0.2; done
  status
}

down() {
  [ -d "$DIR" ] || { echo "no cluster in $DIR"; return 0; }
  for pidfile in "$DIR"/*/redis.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$DIR"
  echo "stopped"
}

status() {
  [ -d "$DIR" ] || { echo "no cluster in $DIR"; return 0; }
  for port in $(ports); do
    role=$(redis-cli -p "$port" role 2>/dev/null | head -1 || true)
    echo "127.0.0.1:$port ${role:-down}"
  done
  redis-cli -p "$BASE_PORT" cluster info 2>/dev/null | grep -E 'cluster_state|cluster_known_nodes' || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
