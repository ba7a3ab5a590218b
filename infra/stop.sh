#!/usr/bin/env bash
# Stops what `make up` / `make cluster-up` started, group by group, in the order given (groups
# separated by `--`: the edges first, then the handlers, then NATS, so nothing is left retrying
# against a server that is gone). Each group gets SIGTERM at once, then up to --grace seconds
# (default 20: the components' own bound is 15) to end; what is left gets SIGKILL, with a line
# saying so. Every pid file given is removed, a stale one too. A pid file whose process is not a
# chatlog or nats-server one (the pid was reused) is removed without signalling anything.
#
#   infra/stop.sh [--grace SECONDS] data/cluster/edge1.pid ... -- data/cluster/history-a.pid ... -- ...
set -uo pipefail

grace=20
if [ "${1:-}" = --grace ]; then
  grace="$2"
  shift 2
fi

# Whether process $1 runs (a zombie has ended: only its parent has not reaped it yet).
alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

# Whether $1 is alive and one of ours.
ours() {
  local cmdline
  alive "$1" || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
  case "$cmdline" in
    *chatlog* | *nats-server*) return 0 ;;
    *) return 1 ;;
  esac
}

stop_group() {
  local pidfile pid name
  local -a names=() pids=()
  for pidfile in "$@"; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    name="$(basename "$pidfile" .pid)"
    rm -f "$pidfile"
    if [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null
      names+=("$name")
      pids+=("$pid")
    fi
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  local deadline=$((SECONDS + grace)) left i
  while :; do
    left=0
    for i in "${!pids[@]}"; do
      alive "${pids[$i]}" && left=$((left + 1))
    done
    [ "$left" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for i in "${!pids[@]}"; do
        if alive "${pids[$i]}"; then
          echo "${names[$i]} (pid ${pids[$i]}) did not stop within ${grace} s of SIGTERM: SIGKILL"
          kill -KILL "${pids[$i]}" 2>/dev/null
        fi
      done
      # SIGKILL cannot be ignored; the kernel takes a moment to reap.
      for _ in $(seq 50); do
        left=0
        for i in "${!pids[@]}"; do alive "${pids[$i]}" && left=1; done
        [ "$left" -eq 0 ] && break
        sleep 0.1
      done
      break
    fi
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if alive "${pids[$i]}"; then
      echo "${names[$i]} (pid ${pids[$i]}) is still there after SIGKILL" >&2
      status=1
    else
      echo "stopped ${names[$i]} (pid ${pids[$i]})"
    fi
  done
}

status=0
group=()
for arg in "$@"; do
  if [ "$arg" = -- ]; then
    stop_group "${group[@]+"${group[@]}"}"
    group=()
  else
    group+=("$arg")
  fi
done
stop_group "${group[@]+"${group[@]}"}"
exit "$status"
