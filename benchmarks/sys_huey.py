"""Huey on SQLite: ``SqliteHuey`` (WAL, fsync=True, i.e. synchronous=FULL), one
``huey_consumer`` with 2 worker processes (``-w 2 -k process``), tasks enqueued by calling them.
Huey has no batch enqueue call, and its tasks are sync."""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import stamps
from system import HERE, System, paced, worker_env

_BIN = Path(sys.executable).parent


class Huey(System):
    name = "huey"
    dist = "huey"
    settings = {
        "default": ("1 × `huey_consumer -w 2 -k process` (default polling: -d 0.1, backoff "
                    "to -m 10)", []),
    }

    def __init__(self, url: str, stamp_dir: Path) -> None:
        super().__init__(url, stamp_dir)
        self.path = url.removeprefix("sqlite:///")

    def prepare(self) -> None:
        os.environ["BENCH_HUEY_DB"] = self.path
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        import tasks_huey

        self.mod = importlib.reload(tasks_huey)

    def enqueue_single(self, n: int, first: int) -> float:
        began = time.perf_counter()
        for k in range(first, first + n):
            self.mod.cmp_noop(k)
        return time.perf_counter() - began

    def enqueue_batch(self, n: int, batch: int, first: int, sync: bool = False) -> None:
        for k in range(first, first + n):  # untimed: there is no batch call to time
            self.mod.cmp_noop(k)
        return None

    def enqueue_paced(self, n: int, gap: float, first: int) -> list[float]:
        return paced(n, gap, lambda k: self.mod.cmp_noop(first + k))

    def workers(self, setting: str) -> list[tuple[str, list[str], dict[str, str]]]:
        env = worker_env(self.stamp_dir, BENCH_HUEY_DB=self.path)
        return [("huey-consumer", [str(_BIN / "huey_consumer"), "tasks_huey.huey", "-w", "2",
                                   "-k", "process", "-q", *self.settings[setting][1]], env)]

    def mark(self) -> None:
        self.seen = set(stamps.read(self.stamp_dir, "done"))

    def backlog(self) -> int:
        queued = self.mod.huey.pending_count()
        done = len(set(stamps.read(self.stamp_dir, "done")) - self.seen)
        started = len(set(stamps.read(self.stamp_dir, "start")))
        return queued + max(started - done, 0) if queued or started > done else 0

    def done_times(self) -> list[float]:
        return [t for k, t in stamps.read(self.stamp_dir, "done").items() if k not in self.seen]
