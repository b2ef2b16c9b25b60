"""What every phase of `jobq bench` works with: the options, the progress display, the work
directory, the processes it started (stopped by PID at the end), and each phase's deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobq.bench.figures import enqueue_batch
from jobq.bench.options import NOOP, TASKS_MODULE, Options, PhaseError
from jobq.harness import Cluster, Proc, child_env

#: Settings the bench sets itself; every other JOBQ_* variable reaches the processes it starts.
_OWN_SETTINGS = {"DATABASE_URL", "TASKS", "HOST", "PORT", "PROCESSES", "CONCURRENCY",
                 "QUEUES", "LOG_LEVEL", "AUTO_MIGRATE"}


def bench_cluster(run_dir: Path, db_url: str) -> Cluster:
    """The harness's Cluster (real processes, own sessions, stopped by PID), with the user's
    JOBQ_* settings instead of the chaos campaigns' short leases."""
    return Cluster(run_dir, child_env({
        "JOBQ_DATABASE_URL": db_url,
        "JOBQ_TASKS": TASKS_MODULE,
        "JOBQ_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }, keep=lambda name: name[5:] not in _OWN_SETTINGS))


class Bench:
    """One run of the bench: its options, progress display, work directory and processes."""

    def __init__(self, opts: Options, progress: Any, work_dir: Path) -> None:
        from jobq.settings import load_settings

        self.opts = opts
        self.progress = progress
        self.work_dir = work_dir
        self.procs: list[Cluster] = []
        self.load_settings = load_settings

    @contextmanager
    def step(self, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        task = self.progress.add_task(label, total=total)

        def advance(done: int) -> None:
            self.progress.update(task, completed=done)

        try:
            yield advance
        finally:
            self.progress.update(task, completed=total or 0, total=total or 0)
            self.progress.stop_task(task)

    def service(self, url: str) -> Any:
        from jobq.service import JobService

        return JobService.from_settings(self.load_settings(database_url=url, tasks=TASKS_MODULE))

    @contextmanager
    def processes(self, url: str) -> Iterator[Cluster]:
        procs = bench_cluster(self.work_dir, url)
        self.procs.append(procs)
        try:
            yield procs
        finally:
            procs.stop()
            self.procs.remove(procs)

    def stop_all(self) -> None:
        for procs in list(self.procs):
            procs.stop()
        self.procs.clear()

    def deadline(self) -> float:
        return time.monotonic() + self.opts.phase_timeout

    def check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise PhaseError(f"{what}: timed out after {self.opts.phase_timeout:.0f}s")

    @staticmethod
    def alive(procs: list[Proc], what: str) -> None:
        dead = [p for p in procs if not p.alive()]
        if dead:
            codes = ", ".join(f"{p.name} exit {p.popen.returncode}" for p in dead if p.popen)
            raise PhaseError(f"{what}: process(es) died ({codes}); logs in {dead[0].name}.log")

    def fill(self, service: Any, n: int, task_type: str = NOOP) -> None:
        """Queue ``n`` jobs as fast as the client allows (untimed)."""
        deadline = self.deadline()
        for first in range(0, n, 1000):
            self.check_deadline(deadline, "queueing jobs")
            enqueue_batch(service, [{"i": i} for i in range(first, min(first + 1000, n))],
                          task_type)
