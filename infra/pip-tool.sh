#!/usr/bin/env bash
# A Python tool from PyPI for the checks, kept in .tools/python/<package>-<version>/ (pip --target:
# no venv, no system site-packages touched); prints that directory (for PYTHONPATH).
#
#   infra/pip-tool.sh PACKAGE VERSION MODULE            install it if `import MODULE` fails there
#   infra/pip-tool.sh --check PACKAGE VERSION MODULE    fail (exit 3) rather than install
set -euo pipefail

check=""
if [ "${1:-}" = --check ]; then check=1; shift; fi
package="$1" version="$2" module="$3"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.tools/python/$package-$version"
python="${PYTHON:-python3}"

if ! PYTHONPATH="$dir" "$python" -c "import $module" 2>/dev/null; then
  if [ -n "$check" ]; then
    echo "$package $version is not installed in $dir: run \`make test\` first" >&2
    exit 3
  fi
  echo "installing $package $version into $dir (pip)" >&2
  mkdir -p "$root/.tools/python"
  # Into a fresh directory first, then renamed: an interrupted install leaves no half of it.
  tmp="$(mktemp -d "$root/.tools/python/.install.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location --target "$tmp" "$package==$version" >&2
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
fi
echo "$dir"
