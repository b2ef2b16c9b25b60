#!/usr/bin/env bash
# Create .venv (if needed) and install jobq with its test tools into it. Sourced by up/test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "jobq needs Python 3.10 or newer as '$PY' (set PYTHON=... to choose another)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian/Ubuntu without python3-venv have no ensurepip: make the venv bare and fetch pip
    # from PyPI with the standard library.
    rm -rf "$VENV"
    "$PY" -m venv --without-pip "$VENV"
    "$VENV/bin/python" "$ROOT/scripts/get_pip.py"
  fi
fi

stamp="$VENV/.jobq-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "==> installing jobq and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]"
  touch "$stamp"
fi
