#!/usr/bin/env bash
# benchmarks/run.sh [--rounds 3] [--jobs 10000] ...: sets up benchmarks/.venv if it is missing,
# then runs the side-by-side benchmark (python run.py --help for every option).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -x "$here/.venv/bin/python" ] || "$here/setup.sh"
exec "$here/.venv/bin/python" "$here/run.py" "$@"
