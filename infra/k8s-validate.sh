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
# It goes to .tools/python/kubernetes-validate-<version>/ (infra/pip-tool.sh); a second run finds
# it there and installs nothing.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSION=1.37.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

mode="${1:-}"
case "$mode" in
  --install | --installed) shift ;;
esac

tool=(kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" kubernetes_validate)
if [ "$mode" = --installed ]; then
  dir="$("$root/infra/pip-tool.sh" --check "${tool[@]}")"
else
  dir="$("$root/infra/pip-tool.sh" "${tool[@]}")"
fi
[ "$mode" = --install ] && exit 0

if [ "$#" -eq 0 ]; then
  set -- "$root/infra/k8s/chatlog.yaml"
fi
PYTHONPATH="$dir" exec "$python" -m kubernetes_validate --strict --quiet \
  --kubernetes-version "$KUBERNETES_VERSION" "$@"
