"""Real jobq processes: started with their output in a log file, signalled only by their PID
(or, when each has its own session, their process group), stopped at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll(predicate: Callable[[], object], timeout: float, interval: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Whether ``predicate`` became true within ``timeout`` seconds."""
    return bool(_poll(predicate, timeout, interval))


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> object:
    """The first true value of ``predicate``; AssertionError naming ``what`` after ``timeout``."""
    value = _poll(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value


def child_env(values: Mapping[str, str], keep: Callable[[str], bool] = lambda name: False
              ) -> dict[str, str]:
    """This process's environment without its JOBQ_* variables (except those ``keep`` keeps),
    plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_") or keep(k)}
    env.update(values)
    return env


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    cwd: Path | None = None
    own_session: bool = True
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        # With its own session, the whole process group: a wrapper such as faketime may run
        # jobq as a child rather than exec it.
        if self.alive():
            try:
                if self.own_session:
                    os.killpg(self.pid, sig)
                else:
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


class Processes:
    """The processes of one run or one test, each logging to ``<log_dir>/<name>.log``.

    With ``own_sessions`` each process leads its own session (a Ctrl-C in the terminal does not
    reach it; signals go to its group); ``pid_file`` collects their PIDs for whoever must end
    what a timed-out run left behind.
    """

    def __init__(self, log_dir: Path, own_sessions: bool = True,
                 pid_file: Path | None = None) -> None:
        self.log_dir = log_dir
        self.own_sessions = own_sessions
        self.pid_file = pid_file
        self.procs: list[Proc] = []

    def launch(self, name: str, args: list[str], env: dict[str, str],
               cwd: Path | None = None) -> Proc:
        proc = Proc(name, args, env, cwd, self.own_sessions)
        self.procs.append(proc)
        return self.spawn(proc)

    def spawn(self, proc: Proc) -> Proc:
        log = open(self.log_dir / f"{proc.name}.log", "ab")
        proc.popen = subprocess.Popen(
            proc.args, env=proc.env, cwd=None if proc.cwd is None else str(proc.cwd),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=proc.own_session,
        )
        if self.pid_file is not None:
            with open(self.pid_file, "a") as f:
                f.write(f"{proc.popen.pid}\n")
        return proc

    def restart(self, proc: Proc) -> Proc:
        """SIGKILL (if still running), then start it again with the same command."""
        if proc.popen is not None and proc.alive():
            proc.signal(signal.SIGKILL)
            proc.popen.wait(10)
        return self.spawn(proc)

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self, grace: float = 20) -> dict[str, int | None]:
        """SIGTERM everything, then SIGKILL what is left; the exit codes by process name."""
        for p in self.procs:
            p.signal(signal.SIGCONT)
            p.signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + grace
        for p in self.procs:
            if p.popen is None:
                continue
            try:
                p.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.signal(signal.SIGKILL)
                p.popen.wait(10)
            codes[p.name] = p.popen.returncode
        return codes

    def kill(self) -> None:
        """SIGKILL whatever is still running (thawed first), and reap it."""
        for p in self.procs:
            p.signal(signal.SIGCONT)
            p.signal(signal.SIGKILL)
        for p in self.procs:
            if p.popen is None:
                continue
            try:
                p.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass


class Cluster(Processes):
    """An API and workers (``python -m jobq ...``) sharing one environment, each in its own
    session; the API on a free port of 127.0.0.1."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        super().__init__(run_dir, own_sessions=True, pid_file=run_dir / "pids.txt")
        self.env = env
        self.api_port = free_port()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, name: str, args: list[str], prefix: list[str] | None = None,
              **env: str) -> Proc:
        return self.launch(name, [*(prefix or []), sys.executable, "-m", "jobq", *args],
                           {**self.env, **env})

    def start_api(self, *extra: str, **env: str) -> Proc:
        return self.start("api", ["api", "--port", str(self.api_port), *extra], **env)

    def start_worker(self, i: int, *extra: str, prefix: list[str] | None = None,
                     **env: str) -> Proc:
        return self.start(f"worker-{i}", ["worker", *extra], prefix=prefix, **env)

    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("worker")]

    def wait_api(self, timeout: float = 60) -> bool:
        def up() -> bool:
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        return wait_until(up, timeout, 0.2)
