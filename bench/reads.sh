#!/usr/bin/env bash
# What a room read costs: a fresh single-node system on its own ports, a room of 2 000 messages,
# then bench/reads.py (`/events` pages read by 16 clients at once for 10 s; 20 WebSocket joins
# with since=0, each a catch-up of the whole room) and the JetStream API requests the server
# counted meanwhile. `bench/reads.sh [path/to/chatlog]` (default target/release/chatlog, or under $CARGO_TARGET_DIR) compares
# builds; CLUSTER=1 runs it on three routed JetStream servers (streams with 3 replicas) instead.
# Needs python3 with aiohttp.
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/chatlog}"
nats="$(infra/nats-server.sh)"; port=4292; mon=8292; http=127.0.0.1:8092
store=$(mktemp -d /tmp/reads.XXXX)
nats_pids=()
if [ -n "${CLUSTER:-}" ]; then
  routes=nats://127.0.0.1:6292,nats://127.0.0.1:6293,nats://127.0.0.1:6294
  for n in 0 1 2; do
    env GOGC=400 GOMEMLIMIT=1GiB "$nats" -n "n$n" -a 127.0.0.1 -p $((port + n)) -m $((mon + n)) -js \
      -sd "$store/nats$n" --cluster_name reads --cluster "nats://127.0.0.1:$((6292 + n))" \
      --routes "$routes" >"$store/nats$n.log" 2>&1 &
    nats_pids+=($!)
  done
  export NATS_URL="nats://127.0.0.1:$port,nats://127.0.0.1:$((port + 1)),nats://127.0.0.1:$((port + 2))"
else
  env GOGC=400 GOMEMLIMIT=1GiB "$nats" -a 127.0.0.1 -p $port -m $mon -js -sd "$store/nats" >"$store/nats.log" 2>&1 &
  nats_pids+=($!)
  export NATS_URL="nats://127.0.0.1:$port"
fi
# Builds before `chatlog setup` created the streams themselves.
if "$bin" setup --help >/dev/null 2>&1; then "$bin" setup >/dev/null; fi
CHATLOG_DATA_DIR="$store/data" CHATLOG_VIEWS_DIR="$store/views" RUST_LOG=warn \
  "$bin" up --http $http --line off --send-rate 1000000 --send-burst 1000000 \
  --limits-exempt 127.0.0.0/8 >"$store/chatlog.log" 2>&1 &
up_pid=$!
python3 infra/wait-ready.py "http://$http/readyz" 60
mons="http://127.0.0.1:$mon"
[ -n "${CLUSTER:-}" ] && mons="$mons,http://127.0.0.1:$((mon + 1)),http://127.0.0.1:$((mon + 2))"
python3 bench/reads.py "http://$http" "$mons" $up_pid
kill $up_pid "${nats_pids[@]}"; wait $up_pid "${nats_pids[@]}" 2>/dev/null; rm -rf "$store"
