#!/usr/bin/env bash
# The flood beside a fan-out: a fresh system with the default per-user and per-address limits
# (the bench's own users lifted where its setup needs it, 127.0.0.1 exempt from per-address
# limits), chatlog bench fanout 10 x 20 at 100 msg/s quiet, then again beside bench/flood.py
# (from 127.0.0.2). Prints each run's line, the edge's CPU and RSS, and what the flood got.
# Needs the release chatlog (in $CARGO_TARGET_DIR when set) and python3 with aiohttp.
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${CHATLOG:-${CARGO_TARGET_DIR:-target}/release/chatlog}"
nats="$(infra/nats-server.sh)"; port=4291; http=127.0.0.1:8091
store=$(mktemp -d /tmp/fr.XXXX)
export NATS_URL="nats://127.0.0.1:$port"
ulimit -n "$(ulimit -Hn)"
env GOGC=400 GOMEMLIMIT=1GiB "$nats" -a 127.0.0.1 -p $port -js -sd "$store/nats" >"$store/nats.log" 2>&1 &
nats_pid=$!
"$bin" setup >/dev/null
CHATLOG_DATA_DIR="$store/data" CHATLOG_VIEWS_DIR="$store/views" RUST_LOG=warn \
  "$bin" up --http $http --line off --max-connections-per-user 100000 \
  --signal-rate 100000 --signal-burst 100000 --rooms-per-minute 1000 --limits-exempt 127.0.0.1/32 >"$store/chatlog.log" 2>&1 &
up_pid=$!
python3 infra/wait-ready.py "http://$http/readyz" 60
sample() { # edge CPU (cores) and RSS over $1 seconds
  local t0 c0 c1; c0=$(awk '{print $14+$15}' /proc/$up_pid/stat); t0=$(date +%s.%N)
  local peak=0; for _ in $(seq $(( $1 * 10 ))); do r=$(awk '/VmRSS/{print $2}' /proc/$up_pid/status); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.1; done
  c1=$(awk '{print $14+$15}' /proc/$up_pid/stat)
  echo "edge: $(echo "($c1-$c0)/100/($(date +%s.%N)-$t0)" | bc -l | cut -c1-4) cores, peak RSS $((peak/1024)) MiB"
}
fan() { "$bin" bench --url "http://$http" --edge-pid $up_pid fanout --rooms 10 --members 20 --rate 100 --duration 12 --prefix "$1" 2>&1 | grep -E " run: |rror" | head -3; }
echo "quiet:"; fan quiet & f=$!; sample 14; wait $f
echo "flood:"; python3 bench/flood.py "http://$http" 14 > "$store/flood.out" 2>&1 & p=$!; sleep 1; fan flooded & f=$!; sample 14; wait $f $p
echo "flood stats: $(cat "$store/flood.out")"
kill $up_pid $nats_pid; wait $up_pid $nats_pid 2>/dev/null; rm -rf "$store"
