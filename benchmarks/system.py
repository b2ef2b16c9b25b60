"""What every system's adapter offers the measurements (enqueue, queue, start workers, read
finish times), and the environment its worker processes get."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path

from jobq.harness import child_env

HERE = Path(__file__).resolve().parent


def version(dist: str) -> str:
    return metadata.version(dist)


def worker_env(stamp_dir: Path, **extra: str) -> dict[str, str]:
    """This environment (less JOBQ_*), with the benchmark's modules importable."""
    return child_env({"PYTHONPATH": str(HERE), "BENCH_STAMP_DIR": str(stamp_dir),
                      "PYTHONUNBUFFERED": "1", **extra})


def paced(n: int, gap: float, call: Callable[[int], None]) -> list[float]:
    """Call ``call(k)`` for k in 0..n-1, one every ``gap`` seconds; each call's return time."""
    out, nxt = [], time.monotonic()
    for k in range(n):
        call(k)
        out.append(time.time())
        nxt += gap
        time.sleep(max(nxt - time.monotonic(), 0))
    return out


async def apaced(n: int, gap: float, call: Callable[[int], Awaitable[object]]) -> list[float]:
    out, nxt = [], time.monotonic()
    for k in range(n):
        await call(k)
        out.append(time.time())
        nxt += gap
        await asyncio.sleep(max(nxt - time.monotonic(), 0))
    return out


class System:
    """One system on one throw-away database. Keys of jobs are their payload's ``k``."""

    name = "?"
    dist = "?"
    #: Worker settings by name: a tuple (label for the output, extra CLI arguments).
    settings: dict[str, tuple[str, list[str]]] = {}

    def __init__(self, url: str, stamp_dir: Path) -> None:
        self.url, self.stamp_dir = url, stamp_dir

    def version(self) -> str:
        return version(self.dist)

    def prepare(self) -> None:
        """Install the schema, open the client."""

    def close(self) -> None:
        """Close the client."""

    def enqueue_single(self, n: int, first: int) -> float:
        """Seconds to enqueue ``n`` jobs one per call, sequentially."""
        raise NotImplementedError

    def enqueue_batch(self, n: int, batch: int, first: int, sync: bool = False
                      ) -> float | None:
        """Seconds to enqueue ``n`` jobs in batches; None if the system has no batch call."""
        raise NotImplementedError

    def enqueue_paced(self, n: int, gap: float, first: int) -> list[float]:
        raise NotImplementedError

    def workers(self, setting: str) -> list[tuple[str, list[str], dict[str, str]]]:
        """(name, argv, env) of each worker process for ``setting``."""
        raise NotImplementedError

    def mark(self) -> None:
        """Remember where the table stands: done_times() counts only what finishes after."""

    def backlog(self) -> int:
        """Jobs not finished yet."""
        raise NotImplementedError

    def done_times(self) -> list[float]:
        """Unix times at which each job finished since mark() was recorded as done."""
        raise NotImplementedError
