"""jobq, driven as a user would: ``python -m jobq worker`` processes, ``jobq.connect()``."""

from __future__ import annotations

import sys
import time

import jobq
from jobq.bench.figures import finished_times, newest_id, queue_empty
from jobq.settings import Settings

from system import System, paced, worker_env

NOOP, NOOP_SYNC = "cmp_noop", "cmp_noop_sync"
DEFAULT_CONCURRENCY = Settings.model_fields["concurrency"].default


class Jobq(System):
    name = "jobq"
    dist = "jobq"
    settings = {
        "default": (f"2 × `jobq worker` (default concurrency, {DEFAULT_CONCURRENCY})", []),
        "tuned": ("2 × `jobq worker --concurrency 200`", ["--concurrency", "200"]),
        "sync": ("2 × `jobq worker` (default concurrency), def handlers", []),
    }

    def prepare(self) -> None:
        self.q = jobq.connect(self.url, tasks=["tasks_jobq"])

    def close(self) -> None:
        self.q.close()

    def enqueue_single(self, n: int, first: int) -> float:
        began = time.perf_counter()
        for k in range(first, first + n):
            self.q.enqueue(NOOP, {"k": k})
        return time.perf_counter() - began

    def enqueue_batch(self, n: int, batch: int, first: int, sync: bool = False) -> float:
        task = NOOP_SYNC if sync else NOOP
        began = time.perf_counter()
        for lo in range(first, first + n, batch):
            hi = min(lo + batch, first + n)
            self.q.enqueue_many([{"task_type": task, "payload": {"k": k}}
                                 for k in range(lo, hi)])
        return time.perf_counter() - began

    def enqueue_paced(self, n: int, gap: float, first: int) -> list[float]:
        return paced(n, gap, lambda k: self.q.enqueue(NOOP, {"k": first + k}))

    def workers(self, setting: str) -> list[tuple[str, list[str], dict[str, str]]]:
        env = worker_env(self.stamp_dir, JOBQ_DATABASE_URL=self.url, JOBQ_TASKS="tasks_jobq",
                         JOBQ_LOG_LEVEL="warning")
        extra = self.settings[setting][1]
        return [(f"jobq-worker-{i}", [sys.executable, "-m", "jobq", "worker", *extra], env)
                for i in range(2)]

    def api(self, port: int) -> tuple[list[str], dict[str, str]]:
        """The command and environment of ``python -m jobq api`` on ``port``."""
        env = worker_env(self.stamp_dir, JOBQ_DATABASE_URL=self.url, JOBQ_TASKS="tasks_jobq",
                         JOBQ_LOG_LEVEL="warning")
        return [sys.executable, "-m", "jobq", "api", "--port", str(port)], env

    def mark(self) -> None:
        self.first_id = newest_id(self.q.store) + 1

    def backlog(self) -> int:
        return 0 if queue_empty(self.q.store) else 1

    def done_times(self) -> list[float]:
        return finished_times(self.q.store, self.first_id)[1]
