#!/usr/bin/env bash
# Validates every document of infra/k8s/chatlog.yaml (or the files given) against the Kubernetes
# API's schemas with kubernetes-validate, strictly (an unknown or misplaced field fails), at the
# newest Kubernetes version that release knows: Kubernetes 1.37 with kubernetes-validate 1.37.0.
# Bump both together when a newer kubernetes-validate is out.
#
#   infra/k8s-validate.sh              install it if missing, then validate
#   infra/k8s-validate.sh --install    only install it (`make test` does, before the Rust tests)
#   infra/k8s-validate.sh --installed  validate, or fail at once if it is not installed (the test
#                                      in services/chatlog/tests/manifests.rs: tests fetch nothing)
#
# It goes to .tools/python/kubernetes-validate-<version>/ (pip --target from PyPI: no venv, no
# system site-packages touched); a second run finds it there and installs nothing.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSION=1.37.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.tools/python/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
python="${PYTHON:-python3}"

installed() {
  PYTHONPATH="$dir" "$python" -c 'import kubernetes_validate' 2>/dev/null
}

install() {
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $dir (pip)" >&2
  mkdir -p "$root/.tools/python"
  # Into a fresh directory first, then renamed: an interrupted install leaves no half of it.
  local tmp
  tmp="$(mktemp -d "$root/.tools/python/.install.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location --target "$tmp" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
}

mode="${1:-}"
case "$mode" in
  --install | --installed) shift ;;
esac

if ! installed; then
  if [ "$mode" = --installed ]; then
    echo "kubernetes-validate $KUBERNETES_VALIDATE_VERSION is not installed in $dir:" \
      "run \`make test\` or \`infra/k8s-validate.sh --install\` first" >&2
    exit 3
  fi
  install
fi
[ "$mode" = --install ] && exit 0

if [ "$#" -eq 0 ]; then
  set -- "$root/infra/k8s/chatlog.yaml"
fi
PYTHONPATH="$dir" exec "$python" -m kubernetes_validate --strict --quiet \
  --kubernetes-version "$KUBERNETES_VERSION" "$@"
