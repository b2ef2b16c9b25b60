#!/usr/bin/env bash
# Creates benchmarks/.venv with jobq (editable, from this repository) and the peers pinned in
# requirements.txt. Safe to run again.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if [ ! -x "$here/.venv/bin/python" ]; then
    "$py" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet --upgrade pip
"$here/.venv/bin/python" -m pip install --quiet -e "$here/.." -r "$here/requirements.txt"
"$here/.venv/bin/python" -c "import jobq, pgqueuer, procrastinate, huey; print('benchmarks/.venv ready')"
