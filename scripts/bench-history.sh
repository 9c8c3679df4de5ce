#!/usr/bin/env bash
# The cost of history and resume (issue #16), on release builds:
#  - W5 (tests/loadgen fanout: 300 subscribers, 3 publishers, websocket)
#    over a three-node mesh with history on (the default) and off
#    (history.size = 0), in alternating rounds;
#  - the ack latency of publish with ack "local" and "replicated" over the
#    mesh, and over Redis;
#  - the memory one stored message costs (RSS growth of a node holding
#    50,000 messages, minus the same node with history off).
# Prints a summary; BENCHMARKS.md has the figures. Everything is on loopback,
# on ports below the ephemeral range and apart from scripts/bench.sh's.
#
#   scripts/bench-history.sh            # BENCH_ROUNDS=3 BENCH_DURATION=10s
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rounds=${BENCH_ROUNDS:-3}
duration=${BENCH_DURATION:-10s}
work=$(mktemp -d /tmp/stickyio-bench-history.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

cargo build --release -p stickyio-node -p stickyio-loadgen
bin=${CARGO_TARGET_DIR:-$root/target}/release
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }

redis_port=25379
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/mesh.secret"

# node NAME PORT ADMIN_PORT EXTRA: writes its config; start NAME runs it.
node_config() {
  cat >"$work/$1.toml" <<TOML
listen = "127.0.0.1:$2"
admin = "127.0.0.1:$3"
name = "$1"
$4
TOML
}
start() { "$bin/stickyio-node" --config "$work/$1.toml" >"$work/$1.log" 2>&1 & pids+=($!); echo $! >"$work/$1.pid"; }
wait_ready() { for _ in $(seq 300); do curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/readyz" 2>/dev/null && return 0; sleep 0.1; done; echo "no answer on $1" >&2; return 1; }

mesh_nodes='["http://127.0.0.1:25001", "http://127.0.0.1:25002", "http://127.0.0.1:25003"]'
# mesh SIZE: three meshed nodes keeping SIZE messages (0: history off).
mesh() {
  for i in 1 2 3; do
    node_config "mesh-$i" "2500$i" "2510$i" "[history]
size = $1
[cluster]
host = \"http://127.0.0.1:2500$i\"
standalone = false
cluster_nodes = $mesh_nodes
secret_file = \"mesh.secret\"
retry_interval = \"1s\""
    start "mesh-$i"
  done
  for i in 1 2 3; do wait_ready "2510$i"; done
}
stop_mesh() { for i in 1 2 3; do kill "$(cat "$work/mesh-$i.pid")"; done; sleep 1; }

w5() { # label: one W5 round on the running mesh, its summary line
  "$bin/stickyio-loadgen" --out "$work/w5-$1.json" fanout --subscribers 300 --publishers 3 --window 16 \
    --target 127.0.0.1:25001,127.0.0.1:25002,127.0.0.1:25003 --label "$1" --source-block 90 \
    --duration "$duration" --warmup 2s >/dev/null
  python3 - "$work/w5-$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['label']}: {r['rate_per_s']:.0f} {r['unit']}/s p50 {r['latency_us']['p50']} us p99 {r['latency_us']['p99']} us errors {r['errors']['total']}")
PY
}

echo "== W5 over the mesh, history on (size 10000) and off (size 0), $rounds rounds of $duration"
for round in $(seq "$rounds"); do
  for size in 10000 0; do
    mesh "$size"
    w5 "history-$size-r$round"
    stop_mesh
  done
done

echo "== ack latency and memory per stored message"
mesh 10000
node_config redis-1 25011 25111 "[cluster]
standalone = false
backend = \"redis\"
redis_url = \"redis://127.0.0.1:$redis_port\"
redis_prefix = \"bench-history\""
start redis-1
node_config store-on 25021 25121 "[history]
size = 50000"
node_config store-off 25022 25122 "[history]
size = 0"
start store-on
start store-off
for p in 25111 25121 25122; do wait_ready "$p"; done
node bench/history/ack-memory.mjs http://127.0.0.1:25001 http://127.0.0.1:25011 \
  http://127.0.0.1:25021 "$(cat "$work/store-on.pid")" http://127.0.0.1:25022 "$(cat "$work/store-off.pid")"
echo "raw reports in $work"
