#!/usr/bin/env bash
# Files (issue 24): a fresh single-node system on its own ports (`chatlog up`, limits lifted for
# the loopback), then services/edge/examples/files_bench.rs RUNS times (default 3): one 25 MiB
# upload and download through the edge against the same bytes put and read with async-nats'
# Object Store, and 10 concurrent 25 MiB uploads with the edge's RSS sampled.
# `bench/files.sh` builds both in release (into $CARGO_TARGET_DIR, or target/) first.
set -uo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p chatlog -p chatlog-edge --bin chatlog --example files_bench || exit 1
bin="$target/release/chatlog"
nats="$(infra/nats-server.sh)"; port=4297; http=127.0.0.1:8097
for p in "$port" "${http##*:}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "bench/files.sh: port $p is in use; stop what listens there first" >&2
    exit 1
  fi
done
store=$(mktemp -d /tmp/files-bench.XXXX)
env GOGC=400 GOMEMLIMIT=1GiB "$nats" -a 127.0.0.1 -p $port -js -sd "$store/nats" >"$store/nats.log" 2>&1 &
nats_pid=$!
export NATS_URL="nats://127.0.0.1:$port"
"$bin" setup >/dev/null
CHATLOG_DATA_DIR="$store/data" CHATLOG_VIEWS_DIR="$store/views" RUST_LOG=warn \
  "$bin" up --http $http --line off --limits-exempt 127.0.0.0/8 >"$store/chatlog.log" 2>&1 &
up_pid=$!
python3 infra/wait-ready.py "http://$http/readyz" 60
status=0
for run in $(seq "${RUNS:-3}"); do
  echo "== run $run"
  "$target/release/examples/files_bench" --url "http://$http" --nats-url "$NATS_URL" \
    --pid "$up_pid" --mib "${MIB:-25}" --concurrent "${CONCURRENT:-10}" || status=1
done
kill "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null
kill "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null
rm -rf "$store"
exit $status
