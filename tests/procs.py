"""Starting and stopping real jobq processes in tests. Only processes we start are signalled,
always by their PID, and every wait is bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(db_url: str, ledger: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_")}
    env.update(FAST)
    env["JOBQ_DATABASE_URL"] = db_url
    env["JOBQ_TASKS"] = "ledger_tasks"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO)])
    env["PYTHONUNBUFFERED"] = "1"
    if ledger:
        env["JOBQ_TEST_LEDGER"] = ledger
    env.update(extra)
    return env


class Procs:
    """Processes started by one test; whatever is still running at the end is killed."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], name: str,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}-{len(self.started)}.log", "wb")
        proc = subprocess.Popen(
            args, env=env, cwd=str(cwd or REPO), stdout=log, stderr=subprocess.STDOUT
        )
        self.started.append(proc)
        return proc

    def worker(self, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-m", "jobq", "worker", *extra], env, "worker")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
