#!/usr/bin/env bash
# benchmarks/scaling.sh [--rounds 3] [--jobs 20000] ...: sets up benchmarks/.venv if it is
# missing, then measures jobq's scaling curve (python scaling.py --help for every option).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -x "$here/.venv/bin/python" ] || "$here/setup.sh"
exec "$here/.venv/bin/python" "$here/scaling.py" "$@"
