"""Run several jobq processes (workers, and for `jobq up` the API) from one command.

Each child is a fresh interpreter (multiprocessing "spawn") in its own process group, so a
Ctrl-C in the terminal reaches only the supervisor, which then asks every child to stop once
with SIGTERM (a second Ctrl-C asks again, which makes workers release their jobs at once).
A child that dies unexpectedly is restarted. A child whose supervisor disappears stops itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jobq.settings import Settings

#: worker.RESTART_EXIT_CODE (not imported: the supervisor stays light).
RESTART_EXIT_CODE = 75

log = logging.getLogger("jobq.supervisor")


def _watch_parent(parent_pid: int) -> None:
    """Stop this child (SIGTERM to itself) when the supervisor is gone."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(1.0)

    threading.Thread(target=watch, name="jobq-parent-watch", daemon=True).start()


def child_main(kind: str, settings_data: dict[str, Any], parent_pid: int, index: int) -> None:
    os.setpgid(0, 0)  # out of the terminal's process group: Ctrl-C goes to the supervisor only
    _watch_parent(parent_pid)
    settings = Settings(**settings_data)
    if kind == "worker":
        from jobq.worker import run_worker

        # A worker that asks to start afresh exits (RESTART_EXIT_CODE) and is restarted.
        raise SystemExit(run_worker(settings, exec_restart=False))
    if kind == "api":
        from jobq.api.server import serve_api

        raise SystemExit(serve_api(settings))
    raise SystemExit(f"unknown process kind {kind!r}")


@dataclass
class Child:
    kind: str
    index: int
    process: multiprocessing.process.BaseProcess | None = None
    restarts: int = 0
    started_at: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"


@dataclass
class Supervisor:
    settings: Settings
    workers: int
    api: bool = False
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._stop_requests = 0
        if self.api:
            self.children.append(Child("api", 0))
        self.children.extend(Child("worker", i) for i in range(self.workers))

    def _start(self, child: Child) -> None:
        data = self.settings.model_dump()
        if child.kind == "worker" and self.settings.metrics_port is not None:
            data["metrics_port"] = self.settings.metrics_port + child.index  # one port each
        child.process = self._ctx.Process(
            target=child_main,
            args=(child.kind, data, os.getpid(), child.index),
            name=f"jobq-{child.name}",
        )
        child.process.start()
        child.started_at = time.monotonic()
        log.info("started %s (pid %s)", child.name, child.process.pid)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_requests += 1

    def _signal_children(self) -> None:
        for child in self.children:
            p = child.process
            if p is not None and p.is_alive() and p.pid is not None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            self._start(child)
        forwarded = 0
        while self._stop_requests == 0:
            for child in self.children:
                p = child.process
                if p is not None and not p.is_alive():
                    if p.exitcode == RESTART_EXIT_CODE:  # asked for: no crash, no delay
                        log.warning("%s (pid %s) stopped to start afresh; restarting",
                                    child.name, p.pid)
                        self._start(child)
                        continue
                    quick = time.monotonic() - child.started_at < 5
                    child.restarts += 1
                    log.error("%s (pid %s) exited with %s; restarting", child.name, p.pid,
                              p.exitcode)
                    if quick:
                        time.sleep(min(child.restarts, 5))  # crash loop: slow down
                    self._start(child)
            time.sleep(0.2)
        log.info("stopping %d process(es)", len(self.children))
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 15
        while time.monotonic() < deadline:
            if forwarded < self._stop_requests:
                forwarded = self._stop_requests
                self._signal_children()
            if not any(c.process and c.process.is_alive() for c in self.children):
                break
            time.sleep(0.1)
        code = 0
        for child in self.children:
            p = child.process
            if p is None:
                continue
            if p.is_alive():
                log.error("%s (pid %s) did not stop in time; killing it", child.name, p.pid)
                p.kill()
                p.join(5)
                code = 1
            elif p.exitcode not in (0, -signal.SIGTERM):
                # -SIGTERM: uvicorn re-raises the signal after its graceful shutdown, and a
                # child still starting up dies of it; either way it stopped as asked.
                log.error("%s exited with %s", child.name, p.exitcode)
                code = 1
        return code
