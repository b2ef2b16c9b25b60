"""The brief's entry point: `python -m worker.worker` runs a jobq worker (same as `jobq worker`;
settings from JOBQ_* variables, options as for `jobq worker --help`)."""

import sys

from jobq.cli import main

if __name__ == "__main__":
    main(["worker", *sys.argv[1:]])
