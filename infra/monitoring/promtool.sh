#!/usr/bin/env bash
# Runs Prometheus's promtool (`promtool check rules`, `promtool test rules`, ...) for the alert
# rules of this folder, installing it when missing.
#
#   infra/monitoring/promtool.sh ARGS...         install it if missing, then `promtool ARGS...`
#   infra/monitoring/promtool.sh --install       only install it (`make test` does, before the
#                                                Rust tests)
#   infra/monitoring/promtool.sh --installed ARGS...
#                                                run it, or fail at once if it is not installed
#                                                (services/chatlog/tests/monitoring.rs: tests
#                                                fetch nothing)
#
# A `promtool` on PATH is used as it is. Otherwise it comes from Debian's `prometheus` package
# (the only registry here that ships it): the .deb is downloaded with `apt-get download` and only
# its /usr/bin/promtool is unpacked into .tools/promtool/ (no dpkg install, no service, no user).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="$root/.tools/promtool"
bin="$dir/promtool"

find_promtool() {
  if [ -x "$bin" ]; then
    echo "$bin"
  elif command -v promtool >/dev/null 2>&1; then
    command -v promtool
  else
    return 1
  fi
}

install_promtool() {
  echo "installing promtool (Debian package prometheus) into $dir" >&2
  mkdir -p "$root/.tools"
  local tmp
  tmp="$(mktemp -d "$root/.tools/.promtool.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # apt's download sandbox user must be able to write there.
  chmod 0777 "$tmp"
  if ! (cd "$tmp" && apt-get download -q prometheus >&2); then
    # A machine that never ran `apt-get update` has no package lists yet.
    apt-get update -q >&2
    (cd "$tmp" && apt-get download -q prometheus >&2)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$dir"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$bin.new"
  mv "$bin.new" "$bin"
  rm -rf "$tmp"
  trap - EXIT
}

mode="${1:-}"
case "$mode" in
  --install | --installed) shift ;;
esac

if ! promtool="$(find_promtool)"; then
  if [ "$mode" = --installed ]; then
    echo "promtool is not installed in $dir nor on PATH:" \
      "run \`make test\` or \`infra/monitoring/promtool.sh --install\` first" >&2
    exit 3
  fi
  install_promtool
  promtool="$bin"
fi
[ "$mode" = --install ] && exit 0
exec "$promtool" "$@"
