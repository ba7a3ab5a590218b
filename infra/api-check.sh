#!/usr/bin/env bash
# Checks the HTTP API against its OpenAPI document with schemathesis: a fresh single-node system on
# free ports (nats-server, `chatlog setup`, `chatlog up --line off` with the limits raised, a
# throwaway data directory), then every operation of /api/openapi.json with generated requests,
# valid and not, as a guest with a token: no 5xx, every answer's status, content type, headers and
# body as documented, bad input refused, and everything stopped at the end (infra/stop.sh).
# Settings: infra/api-check.toml. `make test` runs it.
#
#   infra/api-check.sh              install schemathesis if missing, build chatlog, check
#   infra/api-check.sh --install    only install it
#
# schemathesis goes to .tools/python/schemathesis-<version>/ (infra/pip-tool.sh). The
# chatlog binary is target/debug/chatlog (under $CARGO_TARGET_DIR when set), built first, or
# $CHATLOG_BIN. MAX_EXAMPLES (default 20) bounds the requests generated per operation.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
dir="$("$root/infra/pip-tool.sh" schemathesis "$SCHEMATHESIS_VERSION" schemathesis)"
[ "${1:-}" = --install ] && exit 0

cd "$root"
if [ -z "${CHATLOG_BIN:-}" ]; then
  "${CARGO:-cargo}" build --quiet --bin chatlog
  CHATLOG_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/chatlog"
fi
nats="$(infra/nats-server.sh)"

# Two free ports, from the kernel (released just before use: a race nobody else runs here).
read -r nats_port http_port < <("$python" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
http="127.0.0.1:$http_port"
store="$(mktemp -d "${TMPDIR:-/tmp}/chatlog-api-check.XXXXXX")"
stop() {
  status=$?
  infra/stop.sh --grace 10 "$store/chatlog.pid" -- "$store/nats.pid" >/dev/null
  if [ "$status" -ne 0 ]; then
    echo "--- chatlog.log (last lines) ---" >&2
    tail -n 30 "$store/chatlog.log" >&2 2>/dev/null || true
  fi
  rm -rf "$store"
  exit "$status"
}
trap stop EXIT

"$nats" -a 127.0.0.1 -p "$nats_port" -js -sd "$store/nats" >"$store/nats.log" 2>&1 &
echo $! >"$store/nats.pid"
export NATS_URL="nats://127.0.0.1:$nats_port"
"$CHATLOG_BIN" setup --wait 30 >"$store/setup.log" 2>&1 || { cat "$store/setup.log" >&2; exit 1; }
# The limits raised as the bench scripts raise them: generated requests come fast, from one
# address and one user, and would otherwise be answered 429.
CHATLOG_DATA_DIR="$store/data" CHATLOG_VIEWS_DIR="$store/views" RUST_LOG=warn \
  "$CHATLOG_BIN" up --http "$http" --line off --send-rate 1000000 --send-burst 1000000 \
  --rooms-per-minute 1000000 --login-failures-per-minute 1000000 \
  --max-connections-per-user 100000 --limits-exempt 127.0.0.0/8 \
  >"$store/chatlog.log" 2>&1 &
echo $! >"$store/chatlog.pid"
"$python" infra/wait-ready.py "http://$http/readyz" 60

# A guest's token, for the operations that need one (as a header, and as ?token= where the
# document says it is accepted).
CHATLOG_TOKEN="$("$python" -c '
import json, sys, urllib.request
request = urllib.request.Request(
    sys.argv[1], data=json.dumps({"user": "api-check"}).encode(),
    headers={"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(request, timeout=10))["token"])
' "http://$http/api/auth/guest")"
export CHATLOG_TOKEN

# Hypothesis's own files (its caches) go with the rest of the run, not into the work tree.
HYPOTHESIS_STORAGE_DIRECTORY="$store/hypothesis" PYTHONPATH="$dir" "$python" -m schemathesis.cli --config-file infra/api-check.toml run \
  "http://$http/api/openapi.json" --max-examples "${MAX_EXAMPLES:-20}" --seed "${SEED:-1}" \
  --no-color
