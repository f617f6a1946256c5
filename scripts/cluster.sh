#!/usr/bin/env bash
# A whole local deployment in one command: a Redis Cluster (scripts/redis-cluster.sh: 3 masters,
# 2 replicas each, ports 7000–7008) and 3 drl nodes sharing it and one config file
# (examples/cluster.yaml unless CONFIG is set), all on loopback.
#
#   scripts/cluster.sh up | down | status
#
# Node i (0, 1, 2) serves HTTP on 127.0.0.1:$((HTTP_BASE + i)) (default 8180–8182) and gRPC on
# 127.0.0.1:$((GRPC_BASE + i)) (default 8190–8192). The admin routes are on when DRL_ADMIN_TOKEN
# is set. State (pid files, logs) lives in ${DRL_NODES_DIR:-/tmp/drl-nodes}; `down` stops every
# process `up` started, the Redis Cluster included.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTP_BASE=${HTTP_BASE:-8180}
GRPC_BASE=${GRPC_BASE:-8190}
CONFIG=${CONFIG:-examples/cluster.yaml}
DIR=${DRL_NODES_DIR:-/tmp/drl-nodes}
NODES=3

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
  if [ -d "$DIR" ]; then
    echo "$DIR exists: run '$0 down' first" >&2
    exit 1
  fi
  for i in $(seq 0 $((NODES - 1))); do
    for port in $((HTTP_BASE + i)) $((GRPC_BASE + i)); do
      if listening "$port"; then
        echo "port $port is in use" >&2
        exit 1
      fi
    done
  done
  cargo build --release --locked --quiet -p drl --bin drl
  scripts/redis-cluster.sh up
  mkdir -p "$DIR"
  for i in $(seq 0 $((NODES - 1))); do
    http=127.0.0.1:$((HTTP_BASE + i))
    grpc=127.0.0.1:$((GRPC_BASE + i))
    target/release/drl serve --config "$CONFIG" --http-addr "$http" --grpc-addr "$grpc" \
      >"$DIR/node$i.log" 2>&1 &
    echo $! >"$DIR/node$i.pid"
  done
  for i in $(seq 0 $((NODES - 1))); do
    deadline=$((SECONDS + 30))
    until curl -sf "http://127.0.0.1:$((HTTP_BASE + i))/readyz" >/dev/null; do
      if [ $SECONDS -ge $deadline ] || ! kill -0 "$(cat "$DIR/node$i.pid")" 2>/dev/null; then
        echo "node $i did not become ready; its log:" >&2
        cat "$DIR/node$i.log" >&2
        exit 1
      fi
      sleep 0.2
    done
  done
  status
  cat <<EOF

Ask any node; they share one budget:
  curl -s -X POST http://127.0.0.1:$HTTP_BASE/v1/check -H 'content-type: application/json' -d '{"user_id": "alice", "endpoint": "/api/search"}'
  target/release/drl check --server http://127.0.0.1:$((HTTP_BASE + 1)) alice /api/search
  target/release/drl bench --target envoy --server http://127.0.0.1:$((GRPC_BASE + 2)) --duration 5s
Stop everything: $0 down
EOF
}

down() {
  if [ -d "$DIR" ]; then
    for pidfile in "$DIR"/node*.pid; do
      [ -f "$pidfile" ] || continue
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$DIR"
    echo "drl nodes stopped"
  else
    echo "no drl nodes in $DIR"
  fi
  scripts/redis-cluster.sh down
}

status() {
  for i in $(seq 0 $((NODES - 1))); do
    http=$((HTTP_BASE + i))
    state=down
    if [ -f "$DIR/node$i.pid" ] && kill -0 "$(cat "$DIR/node$i.pid")" 2>/dev/null; then
      state=running
      curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && state=ready
    fi
    echo "node $i: http://127.0.0.1:$http  grpc 127.0.0.1:$((GRPC_BASE + i))  $state"
  done
  scripts/redis-cluster.sh status
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
