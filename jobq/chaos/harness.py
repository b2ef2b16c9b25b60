"""The pieces of a chaos campaign: a throw-away database, real jobq processes, a load generator,
a loopback proxy that can cut a connection, and the fault driver's signals.

Everything talks to 127.0.0.1 only; every loop is bounded in count and time; only processes
started here are ever signalled, by their PID.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# -- databases -------------------------------------------------------------------------------


@dataclass
class Databases:
    """A fresh PostgreSQL database for jobq and another for the ledger, dropped at the end."""

    admin_url: str
    name: str = field(default_factory=lambda: f"jobq_chaos_{uuid.uuid4().hex[:10]}")
    ledger: bool = True  # `jobq bench` needs no ledger database

    @property
    def jobq_url(self) -> str:
        return self._url(self.name)

    @property
    def ledger_url(self) -> str:
        return self._url(self.name + "_ledger")

    def _url(self, db: str) -> str:
        url = make_url(self.admin_url).set(database=db).render_as_string(hide_password=False)
        return url.replace("postgresql+psycopg://", "postgresql://")

    def create(self) -> None:
        from jobq.chaos.ledger import create_schema

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
            if self.ledger:
                admin.execute(f'CREATE DATABASE "{self.name}_ledger"')
        if self.ledger:
            create_schema(self.ledger_url)

    def drop(self) -> None:
        for _ in range(3):
            try:
                with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as a:
                    a.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                    a.execute(f'DROP DATABASE IF EXISTS "{self.name}_ledger" WITH (FORCE)')
                return
            except psycopg.Error:
                time.sleep(2)


# -- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        # The whole process group (each Proc has its own session): a wrapper such as faketime
        # may run jobq as a child rather than exec it.
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass


class Cluster:
    """The API and the workers of one campaign, as real processes."""

    def __init__(self, run_dir: Path, db_url: str, ledger_url: str, **settings: str) -> None:
        self.run_dir = run_dir
        self.procs: list[Proc] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_")}
        self.env.update({
            "JOBQ_DATABASE_URL": db_url,
            "JOBQ_TASKS": "jobq.chaos.tasks",
            "JOBQ_CHAOS_LEDGER_URL": ledger_url,
            "JOBQ_LEASE_SECONDS": "3",
            "JOBQ_RESCUE_INTERVAL_SECONDS": "1",
            "JOBQ_POLL_INTERVAL_SECONDS": "0.2",
            "JOBQ_BACKOFF_BASE_SECONDS": "0.2",
            "JOBQ_BACKOFF_CAP_SECONDS": "2",
            "JOBQ_SHUTDOWN_GRACE_SECONDS": "2",
            "JOBQ_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
        })
        self.env.update(settings)
        self.api_port = free_port()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, proc: Proc) -> Proc:
        log = open(self.run_dir / f"{proc.name}.log", "ab")
        proc.popen = subprocess.Popen(proc.args, env=proc.env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        # The runner reads this to end what a timed-out campaign left behind, by PID.
        with open(self.run_dir / "pids.txt", "a") as f:
            f.write(f"{proc.popen.pid}\n")
        return proc

    def start(self, name: str, args: list[str], prefix: list[str] | None = None,
              **env: str) -> Proc:
        proc = Proc(name, [*(prefix or []), sys.executable, "-m", "jobq", *args],
                    {**self.env, **env})
        self.procs.append(proc)
        return self._spawn(proc)

    def start_api(self, *extra: str, **env: str) -> Proc:
        return self.start("api", ["api", "--port", str(self.api_port), *extra], **env)

    def start_worker(self, i: int, *extra: str, prefix: list[str] | None = None,
                     **env: str) -> Proc:
        return self.start(f"worker-{i}", ["worker", *extra], prefix=prefix, **env)

    def restart(self, proc: Proc) -> Proc:
        if proc.popen is not None and proc.alive():
            proc.signal(signal.SIGKILL)
            proc.popen.wait(10)
        return self._spawn(proc)

    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("worker")]

    def wait_api(self, timeout: float = 60) -> bool:
        def up() -> bool:
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        return wait_until(up, timeout, 0.2)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM everything, then SIGKILL what is left; the exit codes by process name."""
        for p in self.procs:
            p.signal(signal.SIGCONT)
            p.signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + 20
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


# -- load ------------------------------------------------------------------------------------


@dataclass
class Submission:
    key: str
    job_id: int | None = None
    status: int | None = None


class LoadGen:
    """Concurrent clients submitting jobs with idempotency keys, retrying until acknowledged.

    A job counts as accepted once any attempt got a 2xx. Server errors are counted: every 500
    is a bug; a 503 must carry Retry-After.
    """

    def __init__(self, api_url: str, clients: int, make_job: Callable[[int], dict[str, Any]],
                 total: int, deadline_s: float = 240, run_id: str | None = None) -> None:
        self.api_url = api_url
        self.clients = clients
        self.make_job = make_job
        self.total = total
        self.deadline = time.monotonic() + deadline_s
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.submissions = [Submission(f"{self.run_id}-{i}") for i in range(total)]
        self.server_errors = 0
        self.bad_503 = 0
        self.good_503 = 0
        self.conn_errors = 0
        self.created_twice = 0  # 201 for a key that had been acknowledged before
        self._next = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGen:
        for i in range(self.clients):
            t = threading.Thread(target=self._client, name=f"client-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def join(self, timeout: float | None = None) -> None:
        end = time.monotonic() + (timeout if timeout is not None else 1e9)
        for t in self._threads:
            t.join(max(end - time.monotonic(), 0))

    @property
    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.job_id is not None]

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.total:
                return None
            self._next += 1
            return self._next - 1

    def _client(self) -> None:
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < self.deadline:
                i = self._take()
                if i is None:
                    return
                self._submit(client, i)

    def _submit(self, client: httpx.Client, i: int) -> None:
        sub = self.submissions[i]
        body = {**self.make_job(i), "idempotency_key": sub.key}
        acked_before = False
        while time.monotonic() < self.deadline:
            try:
                r = client.post(f"{self.api_url}/jobs", json=body)
            except httpx.HTTPError:
                with self._lock:
                    self.conn_errors += 1
                time.sleep(0.1 + random.random() * 0.2)
                continue
            if r.status_code in (200, 201):
                if r.status_code == 201 and acked_before:
                    with self._lock:
                        self.created_twice += 1
                sub.job_id, sub.status = r.json()["id"], r.status_code
                return
            if r.status_code >= 500:
                with self._lock:
                    if r.status_code == 503 and r.headers.get("retry-after"):
                        self.good_503 += 1
                    else:
                        self.server_errors += 1
                        if r.status_code == 503:
                            self.bad_503 += 1
                time.sleep(0.2 + random.random() * 0.3)
                continue
            # A 4xx for a valid job is a bug too; record it as such and give up on this one.
            with self._lock:
                self.server_errors += 1
            return


# -- a loopback TCP proxy that can stop forwarding -------------------------------------------


class BlackholeProxy:
    """Forwards 127.0.0.1:port to PostgreSQL; ``cut()`` stops forwarding (packets vanish, as
    in a network partition: no reset, no close), ``heal()`` resumes."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True, name="proxy")
        self._thread.start()

    def cut(self) -> None:
        self._cut.set()

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._stop.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                if self._cut.is_set():
                    time.sleep(0.05)  # hold the bytes: the far side sees silence
                    continue
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except OSError:
            pass
        finally:
            a.close()
            b.close()
