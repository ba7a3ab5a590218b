#!/usr/bin/env bash
# The line gateway beside WebSocket (issue 23): a fresh single-node system on its own ports
# (`chatlog up` serving the line protocol on 127.0.0.1:5096, limits lifted), then the same fan-out
# (ROOMS x MEMBERS at RATE msg/s for DURATION s, default 100 x 20 at 2 000 for 20 s) over
# WebSocket and over the line protocol, alternately, RUNS times each (default 2), results in
# bench/results/. `bench/line.sh [path/to/chatlog]` (default target/release/chatlog, or under
# $CARGO_TARGET_DIR; `make build-release` first).
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/chatlog}"
nats="$(infra/nats-server.sh)"; port=4296; http=127.0.0.1:8096; line=127.0.0.1:5096
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for p in "$port" "${http##*:}" "${line##*:}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "bench/line.sh: port $p is in use; stop what listens there first" >&2
    exit 1
  fi
done
store=$(mktemp -d /tmp/line.XXXX)
env GOGC=400 GOMEMLIMIT=1GiB "$nats" -a 127.0.0.1 -p $port -js -sd "$store/nats" >"$store/nats.log" 2>&1 &
nats_pid=$!
export NATS_URL="nats://127.0.0.1:$port"
"$bin" setup >/dev/null
CHATLOG_DATA_DIR="$store/data" CHATLOG_VIEWS_DIR="$store/views" RUST_LOG=warn \
  "$bin" up --http $http --line $line --send-rate 1000000 --send-burst 1000000 \
  --signal-rate 1000000 --signal-burst 1000000 --rooms-per-minute 1000000 \
  --limits-exempt 127.0.0.0/8 --max-connections-per-user 100000 >"$store/chatlog.log" 2>&1 &
up_pid=$!
python3 infra/wait-ready.py "http://$http/readyz" 60
status=0
for run in $(seq "${RUNS:-2}"); do
  for via in ws line; do
    echo "== run $run via $via"
    sync
    "$bin" bench --url "http://$http" --edge-pid "$up_pid" fanout --via "$via" --line-addr $line \
      --rooms "${ROOMS:-100}" --members "${MEMBERS:-20}" --rate "${RATE:-2000}" \
      --duration "${DURATION:-20}" || status=1
    echo
  done
done
kill $up_pid $nats_pid; wait $up_pid $nats_pid 2>/dev/null; rm -rf "$store"
exit $status
