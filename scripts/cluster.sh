#!/usr/bin/env bash
# A whole local deployment in one command: a Redis Cluster (scripts/redis-cluster.sh: 3 masters,
# 2 replicas each, ports 7000–7008) and 3 drl nodes sharing it and one config file
# (examples/cluster.yaml unless CONFIG is set), all on loopback.
#
#   scripts/cluster.sh up [--prometheus] | down | status
#
# Node i (0, 1, 2) serves HTTP on 127.0.0.1:$((HTTP_BASE + i)) (default 8180–8182) and gRPC on
# 127.0.0.1:$((GRPC_BASE + i)) (default 8190–8192). The admin routes are on when DRL_ADMIN_TOKEN
# is set. State (pid files, logs) lives in ${DRL_NODES_DIR:-/tmp/drl-nodes}; `down` stops every
# process `up` started, the Redis Cluster and Prometheus included.
#
# `up --prometheus` also starts a Prometheus (Debian's package, installed with apt-get when
# missing) on 127.0.0.1:$PROM_PORT (default 9090), scraping every node each $SCRAPE_INTERVAL
# (default 5s) with deploy/prometheus/prometheus.yml and the alert rules beside it.
# The Redis Cluster's ports come from BASE_PORT (scripts/redis-cluster.sh; default 7000, as in
# examples/cluster.yaml). DRL_BIN names a drl binary to run instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTP_BASE=${HTTP_BASE:-8180}
GRPC_BASE=${GRPC_BASE:-8190}
CONFIG=${CONFIG:-examples/cluster.yaml}
DIR=${DRL_NODES_DIR:-/tmp/drl-nodes}
PROM_PORT=${PROM_PORT:-9090}
SCRAPE_INTERVAL=${SCRAPE_INTERVAL:-5s}
NODES=3

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
  local prometheus=false
  case "${1:-}" in
    --prometheus) prometheus=true ;;
    "") ;;
    *)
      echo "usage: $0 up [--prometheus]" >&2
      exit 2
      ;;
  esac
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
  if $prometheus && listening "$PROM_PORT"; then
    echo "port $PROM_PORT is in use" >&2
    exit 1
  fi
  local drl=${DRL_BIN:-${CARGO_TARGET_DIR:-target}/release/drl}
  [ -n "${DRL_BIN:-}" ] || cargo build --release --locked --quiet -p drl --bin drl
  scripts/redis-cluster.sh up
  mkdir -p "$DIR"
  for i in $(seq 0 $((NODES - 1))); do
    http=127.0.0.1:$((HTTP_BASE + i))
    grpc=127.0.0.1:$((GRPC_BASE + i))
    "$drl" serve --config "$CONFIG" --http-addr "$http" --grpc-addr "$grpc" \
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
  if $prometheus; then
    start_prometheus
  fi
  status
  cat <<EOF

Ask any node; they share one budget:
  curl -s -X POST http://127.0.0.1:$HTTP_BASE/v1/check -H 'content-type: application/json' -d '{"user_id": "alice", "endpoint": "/api/search"}'
  target/release/drl check --server http://127.0.0.1:$((HTTP_BASE + 1)) alice /api/search
  target/release/drl bench --target envoy --server http://127.0.0.1:$((GRPC_BASE + 2)) --duration 5s
Stop everything: $0 down
EOF
}

# Prometheus with deploy/prometheus/, its targets and intervals set to this cluster's.
start_prometheus() {
  if ! command -v prometheus >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  local conf=$DIR/prometheus
  mkdir -p "$conf"
  # Rule groups evaluated at the scrape interval too (the daily ratio's group says 1m).
  sed -e "s/^\(    interval:\).*/\1 $SCRAPE_INTERVAL/" deploy/prometheus/alerts.yaml >"$conf/alerts.yaml"
  local targets=""
  for i in $(seq 0 $((NODES - 1))); do
    targets+="          - 127.0.0.1:$((HTTP_BASE + i))\n"
  done
  sed -e "s/^\(  [a-z_]*_interval:\).*/\1 $SCRAPE_INTERVAL/" -e '/^          - 127\.0\.0\.1:/d' \
    -e "s/^\(      - targets:\)\$/\1\n${targets%\\n}/" deploy/prometheus/prometheus.yml >"$conf/prometheus.yml"
  prometheus --config.file="$conf/prometheus.yml" --storage.tsdb.path="$conf/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --storage.tsdb.retention.time=1d \
    >"$DIR/prometheus.log" 2>&1 &
  echo $! >"$DIR/prometheus.pid"
  local deadline=$((SECONDS + 30))
  until curl -sf "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$(cat "$DIR/prometheus.pid")" 2>/dev/null; then
      echo "Prometheus did not become ready; its log:" >&2
      cat "$DIR/prometheus.log" >&2
      exit 1
    fi
    sleep 0.2
  done
}

down() {
  if [ -d "$DIR" ]; then
    for pidfile in "$DIR"/node*.pid "$DIR"/prometheus.pid; do
      [ -f "$pidfile" ] || continue
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$DIR"
    echo "drl nodes and Prometheus stopped"
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
  if [ -f "$DIR/prometheus.pid" ]; then
    state=down
    curl -sf "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null && state=ready
    echo "prometheus: http://127.0.0.1:$PROM_PORT  $state"
  fi
  scripts/redis-cluster.sh status
}

case "${1:-}" in
  up) up "${2:-}" ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: $0 up [--prometheus] | down | status" >&2
    exit 2
    ;;
esac
