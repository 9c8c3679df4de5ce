#!/usr/bin/env bash
# The stickyio benchmarks in one command (see BENCHMARKS.md):
#
#   scripts/bench.sh
#
# Installs the baselines (apt: nginx, haproxy, redis-server, linux-perf;
# npm: socket.io and its adapters in bench/node-baseline), builds the release
# binaries, starts every setup as its own processes on 127.0.0.1, runs each
# workload on each setup in turn, and writes bench/results/results.{json,md}.
# Every process it starts is stopped by its PID on exit.
#
# Knobs (environment): BENCH_DURATION (measured window, default 10s),
# BENCH_WARMUP (2s), BENCH_ROUNDS (rounds over all setups, default 2; the
# second visits setups in reverse order), BENCH_OUT (bench/results),
# BENCH_PROFILE (1 = also perf-profile the machine under W1 through the
# gateway, default 1), BENCH_NICE (niceness of everything the run starts,
# default -10 when root: other work on the machine gets less of the two
# cores while the numbers are taken, equally for every setup),
# BENCH_WORKLOADS (which of w1 w2 w3 w4 w5 to run, default all; e.g.
# BENCH_WORKLOADS=w4 to rerun the idle-memory comparison alone),
# BENCH_GATEWAYS (more gateway builds to compare, as space-separated
# NAME=BINARY pairs, default none: e.g.
# BENCH_GATEWAYS="hyperconn=/tmp/hyperconn-gateway" adds the setup
# gateway-hyperconn, that binary with the standard gateway's config on its
# own port, to W1, W2, W3 and W4, visited in turn with the other setups).
#
# BENCH_W5_WINDOW (each W5 publisher's own messages in flight, default 8:
# the target is a rate at p99 <= 50 ms, and 16 only queued more).
#
# W4 measures each proxy (gateway, nginx, HAProxy) freshly restarted just
# before its measurement, in every round: a process keeps the heap it grew
# earlier, which would hide the memory the idle sessions take.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
duration=${BENCH_DURATION:-10s}
warmup=${BENCH_WARMUP:-2s}
rounds=${BENCH_ROUNDS:-2}
out=${BENCH_OUT:-$root/bench/results}
profile=${BENCH_PROFILE:-1}
workloads=" ${BENCH_WORKLOADS:-w1 w2 w3 w4 w5} "
w5_window=${BENCH_W5_WINDOW:-8}
for w in $workloads; do
  case $w in
  w1 | w2 | w3 | w4 | w5) ;;
  *)
    echo "BENCH_WORKLOADS: unknown workload '$w' (expected some of w1 w2 w3 w4 w5)" >&2
    exit 2
    ;;
  esac
done
wanted() { [[ $workloads == *" $1 "* ]]; }
# Extra gateway builds: setup name -> binary.
declare -A extra_gateway=()
for pair in ${BENCH_GATEWAYS:-}; do
  name=${pair%%=*}
  binary=${pair#*=}
  if ! [[ $pair == *=* && $name =~ ^[A-Za-z0-9_]+$ && -x $binary ]]; then
    echo "BENCH_GATEWAYS: '$pair' is not NAME=BINARY (NAME of letters, digits, _; BINARY executable)" >&2
    exit 2
  fi
  extra_gateway[gateway-$name]=$(realpath "$binary")
done
extra_setups=()
if [ "${#extra_gateway[@]}" -gt 0 ]; then
  mapfile -t extra_setups < <(printf '%s\n' "${!extra_gateway[@]}" | sort)
fi
if [ "$(id -u)" -eq 0 ]; then
  renice -n "${BENCH_NICE:--10}" -p $$ >/dev/null
fi
work=$(mktemp -d /tmp/stickyio-bench.XXXXXX)
started_at=$(date -u +%FT%TZ)
step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%T)"; }

# Every port on 127.0.0.1, below the ephemeral range (32768+) so no client
# socket of a concurrent test run can take one.
node_ports=(23001 23002 23003)
redis_node_ports=(24001 24002 24003)
# Each node's admin listener (/readyz, /metrics): its client port + 6000.
node_admin() { echo $(($1 + 6000)); }
gateway_port=28080
gateway_admin=29090
nginx_iphash_port=28081
nginx_consistent_port=28082
haproxy_port=28083
node_cluster_port=28090
node_redis_port=28091
redis_port=26379
# Extra gateways (BENCH_GATEWAYS) listen from 28100, admin from 29100.
extra_gateway_port=28100
extra_gateway_admin=29100

pids=()
declare -A pid_of
start() { # name, then the command; logs to $work/<name>.log
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  pid_of[$name]=$!
}
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  echo "stopped ${#pids[@]} processes; logs in $work"
  exit "$status"
}
trap cleanup EXIT

step "Baselines from apt and npm"
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v redis-server >/dev/null || need+=(redis-server)
command -v perf >/dev/null || need+=(linux-perf)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
(cd bench/node-baseline && npm ci --no-audit --no-fund --loglevel=error)

step "Release build"
cargo build --release -p stickyio-node -p stickyio-gateway -p stickyio-loadgen
bin=${CARGO_TARGET_DIR:-$root/target}/release
loadgen=$bin/stickyio-loadgen

step "Configs in $work"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/mesh.secret"
cluster_nodes=$(printf '"http://127.0.0.1:%s", ' "${node_ports[@]}")
cluster_nodes="[${cluster_nodes%, }]"
names=(node-a node-b node-c)
for i in 0 1 2; do
  cat >"$work/${names[$i]}.toml" <<EOF
listen = "127.0.0.1:${node_ports[$i]}"
admin = "127.0.0.1:$(node_admin "${node_ports[$i]}")"
name = "${names[$i]}"

[cluster]
host = "http://127.0.0.1:${node_ports[$i]}"
standalone = false
cluster_nodes = $cluster_nodes
secret_file = "mesh.secret"
EOF
done
# The same three nodes with the Redis backend instead of the mesh (W5).
for i in 0 1 2; do
  cat >"$work/redis-${names[$i]}.toml" <<EOF
listen = "127.0.0.1:${redis_node_ports[$i]}"
admin = "127.0.0.1:$(node_admin "${redis_node_ports[$i]}")"
name = "${names[$i]}"

[cluster]
standalone = false
backend = "redis"
redis_url = "redis://127.0.0.1:$redis_port"
redis_prefix = "bench"
EOF
done
{
  cat <<EOF
listen = "127.0.0.1:$gateway_port"
admin = "127.0.0.1:$gateway_admin"

[limits]
# W4 holds 7,500 client connections (and as many to the nodes).
max_connections = 19000
EOF
  for i in 0 1 2; do
    printf '\n[[nodes]]\nname = "%s"\naddr = "127.0.0.1:%s"\n' "${names[$i]}" "${node_ports[$i]}"
  done
} >"$work/gateway.toml"
# Each extra gateway: the same config on its own ports.
declare -A extra_port=()
i=0
for setup in "${extra_setups[@]}"; do
  extra_port[$setup]=$((extra_gateway_port + i))
  sed -e "s/^listen = .*/listen = \"127.0.0.1:$((extra_gateway_port + i))\"/" \
    -e "s/^admin = .*/admin = \"127.0.0.1:$((extra_gateway_admin + i))\"/" \
    "$work/gateway.toml" >"$work/$setup.toml"
  i=$((i + 1))
done

nginx_conf() { # name, port, balancing directive
  mkdir -p "$work/$1"
  cat >"$work/$1/nginx.conf" <<EOF
daemon off;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path $work/$1/body;
  proxy_temp_path $work/$1/proxy;
  fastcgi_temp_path $work/$1/fastcgi;
  uwsgi_temp_path $work/$1/uwsgi;
  scgi_temp_path $work/$1/scgi;
  # Upgrade for websockets; no Connection header otherwise, so the
  # upstream keep-alive pool is used for polling requests.
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream nodes {
    $3;
$(for p in "${node_ports[@]}"; do echo "    server 127.0.0.1:$p;"; done)
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / {
      proxy_pass http://nodes;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_read_timeout 120s;
    }
  }
}
EOF
}
nginx_conf nginx-iphash "$nginx_iphash_port" "ip_hash"
nginx_conf nginx-consistent "$nginx_consistent_port" "hash \$remote_addr consistent"

cat >"$work/haproxy.cfg" <<EOF
global
  maxconn 9500
  ulimit-n 20000
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout tunnel 120s
frontend public
  bind 127.0.0.1:$haproxy_port
  default_backend nodes
backend nodes
  balance source
  hash-type consistent
$(for i in 0 1 2; do echo "  server ${names[$i]} 127.0.0.1:${node_ports[$i]} maxconn 10000"; done)
EOF
nginx -t -q -e "$work/nginx-test.log" -c "$work/nginx-iphash/nginx.conf"
haproxy -c -q -f "$work/haproxy.cfg"

start_proxy() { # setup: starts the process in front of the nodes
  case $1 in
  gateway) start gateway env RUST_LOG=warn "$bin/stickyio-gateway" --config "$work/gateway.toml" ;;
  gateway-*) start "$1" env RUST_LOG=warn "${extra_gateway[$1]}" --config "$work/$1.toml" ;;
  nginx-*) start "$1" nginx -e "$work/$1/error.log" -c "$work/$1/nginx.conf" ;;
  haproxy) start haproxy haproxy -db -f "$work/haproxy.cfg" ;;
  esac
}
proxies=(gateway "${extra_setups[@]}" nginx-iphash nginx-consistent haproxy)

step "Start every setup"
start redis redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no
for i in 0 1 2; do
  start "${names[$i]}" env RUST_LOG=warn "$bin/stickyio-node" --config "$work/${names[$i]}.toml"
  start "redis-${names[$i]}" env RUST_LOG=warn "$bin/stickyio-node" --config "$work/redis-${names[$i]}.toml"
done
for setup in "${proxies[@]}"; do start_proxy "$setup"; done
start node-cluster env PORT=$node_cluster_port ADAPTER=cluster node bench/node-baseline/server.js
start node-redis env PORT=$node_redis_port ADAPTER=redis REDIS_URL="redis://127.0.0.1:$redis_port" node bench/node-baseline/server.js

wait_http() { # url: until it answers 200, at most 30 s
  for _ in $(seq 300); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $1; logs in $work" >&2
  return 1
}
for p in "${node_ports[@]}" "${redis_node_ports[@]}"; do wait_http "http://127.0.0.1:$(node_admin "$p")/readyz"; done
handshake="socket.io/?EIO=4&transport=polling"
for p in $gateway_port "${extra_port[@]}" $nginx_iphash_port $nginx_consistent_port $haproxy_port $node_cluster_port $node_redis_port; do
  wait_http "http://127.0.0.1:$p/$handshake"
done

# Setup name -> where clients go.
declare -A target=(
  [direct]="127.0.0.1:${node_ports[0]}"
  [gateway]="127.0.0.1:$gateway_port"
  [nginx-iphash]="127.0.0.1:$nginx_iphash_port"
  [nginx-consistent]="127.0.0.1:$nginx_consistent_port"
  [haproxy]="127.0.0.1:$haproxy_port"
  [node-cluster]="127.0.0.1:$node_cluster_port"
  [node-redis]="127.0.0.1:$node_redis_port"
  [stickyio-cluster]="$(printf '127.0.0.1:%s,' "${node_ports[@]}" | sed 's/,$//')"
  [stickyio-redis]="$(printf '127.0.0.1:%s,' "${redis_node_ports[@]}" | sed 's/,$//')"
)
for setup in "${!extra_port[@]}"; do target[$setup]="127.0.0.1:${extra_port[$setup]}"; done
proxy_setups=(direct gateway "${extra_setups[@]}" nginx-iphash nginx-consistent haproxy node-cluster)
idle_setups=(gateway "${extra_setups[@]}" nginx-iphash nginx-consistent haproxy)
fanout_setups=(stickyio-cluster stickyio-redis node-cluster node-redis)
pid_of[nginx-iphash]=$(cat "$work/nginx-iphash/nginx.pid")
pid_of[nginx-consistent]=$(cat "$work/nginx-consistent/nginx.pid")
node_pids="--pid ${pid_of[node-a]} --pid ${pid_of[node-b]} --pid ${pid_of[node-c]}"
proxy_pid() { # the process in front of the nodes (W4 measures its memory)
  case $1 in
  gateway | gateway-* | haproxy | nginx-*) echo "--pid ${pid_of[$1]}" ;;
  esac
}
pids_of() { # every process of a setup, for CPU per process
  case $1 in
  direct) echo "--pid ${pid_of[node-a]}" ;;
  stickyio-cluster) echo "$node_pids" ;;
  stickyio-redis) echo "--pid ${pid_of[redis-node-a]} --pid ${pid_of[redis-node-b]} --pid ${pid_of[redis-node-c]} --pid ${pid_of[redis]}" ;;
  node-cluster) echo "--pid ${pid_of[node-cluster]}" ;;
  node-redis) echo "--pid ${pid_of[node-redis]} --pid ${pid_of[redis]}" ;;
  *) echo "$(proxy_pid "$1") $node_pids" ;;
  esac
}

raw=$out/raw
rm -rf "$raw"
mkdir -p "$raw"
# Which process is which, for the CPU columns of the results (a restarted
# proxy adds a line).
for name in "${!pid_of[@]}"; do printf '%s %s\n' "${pid_of[$name]}" "$name"; done >"$out/pids.txt"
restart_proxy() { # setup: stops its proxy by PID, starts a fresh one, waits for it
  local setup=$1 old=${pid_of[$1]}
  kill -TERM "$old"
  wait "$old" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$old" 2>/dev/null || true
  local kept=()
  for pid in "${pids[@]}"; do [ "$pid" = "$old" ] || kept+=("$pid"); done
  pids=("${kept[@]}")
  start_proxy "$setup"
  wait_http "http://${target[$setup]}/$handshake"
  case $setup in
  nginx-*) pid_of[$setup]=$(cat "$work/$setup/nginx.pid") ;;
  esac
  printf '%s %s\n' "${pid_of[$setup]}" "$setup" >>"$out/pids.txt"
}
block=0
measure() { # workload-name setup round, then loadgen args
  local name=$1 setup=$2 round=$3
  shift 3
  block=$((block + 1))
  printf '  %-18s %-17s round %s ... ' "$name" "$setup" "$round"
  # shellcheck disable=SC2046
  "$loadgen" --out "$raw/$name--$setup--r$round.json" "$@" $("${pick:-pids_of}" "$setup") \
    --target "${target[$setup]}" --label "$setup" --source-block "$block" \
    --duration "$duration" --warmup "$warmup" >/dev/null
  python3 - "$raw/$name--$setup--r$round.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['rate_per_s']:.0f} {r['unit']}/s, p99 {r['latency_us']['p99']} us, errors {r['errors']['total']}")
PY
}
in_order() { # round, setups...: forward on odd rounds, reverse on even
  local round=$1
  shift
  if [ $((round % 2)) = 1 ]; then printf '%s\n' "$@"; else printf '%s\n' "$@" | tac; fi
}

for round in $(seq "$rounds"); do
  step "Round $round of $rounds"
  wanted w1 && for setup in $(in_order "$round" "${proxy_setups[@]}"); do
    measure w1-polling "$setup" "$round" roundtrip --clients 200 --transport polling
  done
  wanted w2 && for setup in $(in_order "$round" "${proxy_setups[@]}"); do
    measure w2-websocket "$setup" "$round" roundtrip --clients 200 --transport websocket
  done
  wanted w3 && for setup in $(in_order "$round" "${proxy_setups[@]}"); do
    measure w3-churn "$setup" "$round" churn --clients 50 --transport polling
  done
  wanted w4 && for setup in $(in_order "$round" "${idle_setups[@]}"); do
    # Memory of the process in front of the nodes only, freshly started.
    restart_proxy "$setup"
    pick=proxy_pid measure w4-idle "$setup" "$round" idle --websockets 6000 --polling 1500 --open-concurrency 200
    sleep 2 # let the closed sessions drain before the next setup
  done
  wanted w5 && for setup in $(in_order "$round" "${fanout_setups[@]}"); do
    measure w5-fanout "$setup" "$round" fanout --subscribers 300 --publishers 3 --window "$w5_window"
  done
done

if [ "$profile" = 1 ]; then
  step "Profile (perf, cpu-clock): gateway and node-a during W1 polling through the gateway"
  perf_pids=()
  for who in gateway node-a; do
    perf record -e cpu-clock -F 999 -g -p "${pid_of[$who]}" -o "$work/perf-$who.data" -- sleep 8 >/dev/null 2>&1 &
    pids+=($!)
    perf_pids+=($!)
  done
  "$loadgen" --out "$raw/profile-w1-gateway.json" roundtrip --clients 200 --transport polling \
    --target "${target[gateway]}" --label gateway-profiled --source-block 250 --duration 8s --warmup 0s \
    $(pids_of gateway) >/dev/null
  wait "${perf_pids[@]}" || true
  for who in gateway node-a; do
    perf report -i "$work/perf-$who.data" --stdio --no-children --sort dso -g none \
      >"$out/profile-$who-by-dso.txt" 2>/dev/null || true
    perf report -i "$work/perf-$who.data" --stdio --no-children --sort dso,symbol -g none \
      --percent-limit 0.5 >"$out/profile-$who.txt" 2>/dev/null || true
    perf report -i "$work/perf-$who.data" --stdio --children --sort symbol -g none \
      --percent-limit 3 >"$out/profile-$who-inclusive.txt" 2>/dev/null || true
  done
fi

step "Versions and results"
socket_io_version=$(node -p 'require("./bench/node-baseline/node_modules/socket.io/package.json").version')
python3 - "$out" "$started_at" <<EOF
import json, sys
json.dump({
  "started": sys.argv[2],
  "nproc": $(nproc),
  "memory": "$(free -h | awk '/^Mem:/{print $2}')",
  "kernel": "$(uname -r)",
  "open_files_limit": $(ulimit -Hn),
  "rustc": "$(rustc --version)",
  "nginx": "$(nginx -v 2>&1 | sed 's/.*: //')",
  "haproxy": "$(haproxy -v | head -1)",
  "node": "$(node --version)",
  "socket.io": "$socket_io_version",
  "redis": "$(redis-server --version)",
  "duration": "$duration",
  "warmup": "$warmup",
  "rounds": $rounds,
}, open(sys.argv[1] + "/versions.json", "w"), indent=2)
EOF
python3 bench/summarize.py "$out"

step "Charts (bench/charts.py, matplotlib in bench/.venv)"
[ -x bench/.venv/bin/python ] || python3 -m venv bench/.venv
bench/.venv/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
bench/.venv/bin/python bench/charts.py "$out"
echo "results: $out/results.md, $out/results.json and the charts $out/*.png"
