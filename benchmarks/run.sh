#!/usr/bin/env bash
# benchmarks/run.sh [--rounds 3] [--jobs 10000] ...: sets up benchmarks/.venv if it is missing or stale,
# then runs the side-by-side benchmark (python run.py --help for every option).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Set up again when jobq's dependencies changed since (an import fails).
"$here/.venv/bin/python" -c "import jobq, pgqueuer" 2>/dev/null || "$here/setup.sh"
exec "$here/.venv/bin/python" "$here/run.py" "$@"
