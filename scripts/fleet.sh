#!/usr/bin/env bash
# A local fleet on loopback: one etcd and N `moe serve` replicas sharing its registry.
#   scripts/fleet.sh etcd              start etcd on 127.0.0.1:$ETCD_PORT (foreground)
#   scripts/fleet.sh replicas [N]      start N replicas (default 3) on ports $PORT0+1.. (foreground;
#                                      Ctrl-C stops them); each has its own state folder
#   scripts/fleet.sh up [N]            both, in the background; prints the replicas' URLs
#   scripts/fleet.sh down              stop what `up` started
#   scripts/fleet.sh status            GET /fleet on the first replica
# Environment: ETCD_PORT (2379), PORT0 (8080: replicas on 8081, 8082, ...), MOE_MODELS (models),
# FLEET_DIR (state/fleet: etcd data, replica state, logs, pids), MOE_ADMIN_TOKEN (dev-token),
# FLEET_PREFIX (moe). Extra flags after N go to every `moe serve`.
# The same flags run each replica in Kubernetes (deploy/k8s/): only the addresses differ.
set -euo pipefail
cd "$(dirname "$0")/.."
ETCD_PORT=${ETCD_PORT:-2379}
PORT0=${PORT0:-8080}
FLEET_DIR=${FLEET_DIR:-state/fleet}
FLEET_PREFIX=${FLEET_PREFIX:-moe}
export MOE_MODELS=${MOE_MODELS:-models}
export MOE_ADMIN_TOKEN=${MOE_ADMIN_TOKEN:-dev-token}
export MOE_REGISTRY="etcd://127.0.0.1:${ETCD_PORT}/${FLEET_PREFIX}"
mkdir -p "$FLEET_DIR"

start_etcd() {
  command -v etcd >/dev/null || { echo "etcd not found: scripts/setup.sh --train installs Debian's etcd-server" >&2; exit 1; }
  exec etcd --name moe-fleet --data-dir "$FLEET_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "moe-fleet=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --auto-compaction-retention 1
}

start_replica() { # index, extra flags...
  local i=$1
  shift
  MOE_PORT=$((PORT0 + i)) MOE_STATE="$FLEET_DIR/replica-$i" MOE_REPLICA_ID="replica-$i" \
    exec target/release/moe serve "$@"
}

wait_ready() { # port
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "replica on port $1 not ready after 30 s (see $FLEET_DIR/*.log)" >&2
  return 1
}

cmd=${1:-up}
shift || true
N=${1:-3}
[ $# -gt 0 ] && shift
case "$cmd" in
  etcd) start_etcd ;;
  replicas)
    [ -x target/release/moe ] || scripts/setup.sh
    pids=()
    for i in $(seq 1 "$N"); do
      start_replica "$i" "$@" &
      pids+=($!)
    done
    trap 'kill "${pids[@]}" 2>/dev/null; wait' INT TERM
    wait
    ;;
  up)
    [ -x target/release/moe ] || scripts/setup.sh
    (start_etcd >"$FLEET_DIR/etcd.log" 2>&1 &
      echo $! >"$FLEET_DIR/etcd.pid")
    for i in $(seq 1 "$N"); do
      (start_replica "$i" "$@" >"$FLEET_DIR/replica-$i.log" 2>&1 &
        echo $! >"$FLEET_DIR/replica-$i.pid")
    done
    for i in $(seq 1 "$N"); do
      wait_ready $((PORT0 + i))
      echo "replica-$i http://127.0.0.1:$((PORT0 + i))"
    done
    ;;
  down)
    for f in "$FLEET_DIR"/replica-*.pid "$FLEET_DIR"/etcd.pid; do
      [ -f "$f" ] || continue
      kill "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done
    ;;
  status) curl -fsS "http://127.0.0.1:$((PORT0 + 1))/fleet" ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
