"""Real jobq processes in tests: the harness's (``jobq.harness``), with the tests' short leases
and task module. Only processes we start are signalled, always by their PID, and every wait
is bounded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jobq.harness import Processes, child_env

REPO = Path(__file__).resolve().parents[2]
#: This folder, on the PYTHONPATH of the processes started here: JOBQ_TASKS=ledger_tasks.
SUPPORT = Path(__file__).resolve().parent

#: Short leases and intervals so that the fault tests finish in seconds.
FAST = {
    "JOBQ_LEASE_SECONDS": "2",
    "JOBQ_RESCUE_INTERVAL_SECONDS": "0.5",
    "JOBQ_POLL_INTERVAL_SECONDS": "0.1",
    "JOBQ_BACKOFF_BASE_SECONDS": "0.05",
    "JOBQ_BACKOFF_CAP_SECONDS": "0.2",
    "JOBQ_SHUTDOWN_GRACE_SECONDS": "1",
    "JOBQ_LOG_LEVEL": "info",
}


def env_for(db_url: str, ledger: str | None = None, **extra: str) -> dict[str, str]:
    env = child_env({
        **FAST,
        "JOBQ_DATABASE_URL": db_url,
        "JOBQ_TASKS": "ledger_tasks",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
        "PYTHONUNBUFFERED": "1",
    })
    if ledger:
        env["JOBQ_TEST_LEDGER"] = ledger
    env.update(extra)
    return env


class Procs(Processes):
    """Processes started by one test (in the test's process group); whatever is still running
    at the end is killed."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir, own_sessions=False)

    def start(self, args: list[str], env: dict[str, str], name: str,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        proc = self.launch(f"{name}-{len(self.procs)}", args, env, cwd or REPO)
        assert proc.popen is not None
        return proc.popen

    def worker(self, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-m", "jobq", "worker", *extra], env, "worker")

    def stop_all(self) -> None:
        self.kill()
