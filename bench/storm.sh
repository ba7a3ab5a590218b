#!/usr/bin/env bash
# A reconnect storm at full size: a fresh single-node system on its own ports (`chatlog up`, the
# edge messages come in through), then `chatlog bench storm`, which starts an edge of its own with
# CLIENTS clients in ROOMS rooms (default 5 000 in 500) and restarts it with SIGTERM, then with
# SIGKILL, while messages keep coming. It prints how long until every client had resumed, the
# storm edge's and nats-server's peak CPU and memory, the JetStream API requests counted, and
# every event missed or received twice. `bench/storm.sh [path/to/chatlog]` (default
# target/release/chatlog, or under $CARGO_TARGET_DIR; `make build-release` first).
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/chatlog}"
nats="$(infra/nats-server.sh)"; port=4295; http=127.0.0.1:8095
store=$(mktemp -d /tmp/storm.XXXX)
env GOGC=400 GOMEMLIMIT=1GiB "$nats" -a 127.0.0.1 -p $port -js -sd "$store/nats" >"$store/nats.log" 2>&1 &
nats_pid=$!
export NATS_URL="nats://127.0.0.1:$port"
"$bin" setup >/dev/null
CHATLOG_DATA_DIR="$store/data" CHATLOG_VIEWS_DIR="$store/views" RUST_LOG=warn \
  "$bin" up --http $http --line off --send-rate 1000000 --send-burst 1000000 --rooms-per-minute 1000000 \
  --limits-exempt 127.0.0.0/8 >"$store/chatlog.log" 2>&1 &
up_pid=$!
python3 infra/wait-ready.py "http://$http/readyz" 60
"$bin" bench --url "http://$http" --edge-pid "$up_pid" storm --chatlog "$bin" \
  --clients "${CLIENTS:-5000}" --rooms "${ROOMS:-500}" --rate "${RATE:-50}"
status=$?
kill $up_pid $nats_pid; wait $up_pid $nats_pid 2>/dev/null; rm -rf "$store"
exit $status
