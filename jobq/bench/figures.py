"""How the figures are taken: peak memory from /proc, percentiles, rates from the jobs' own
timestamps, and the reads through the store's public methods that they come from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jobq.types import JobState


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size of a live process (VmHWM), in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def api_tree_peak_rss_kb(pid: int) -> int | None:
    """The largest VmHWM among the API process and its children: with ``--processes N`` the
    process started is uvicorn's supervisor and the children serve."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    peaks = [kb for kb in map(vm_hwm_kb, pids) if kb]
    return max(peaks) if peaks else None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rates(started: list[float], finished: list[float]) -> dict[str, float | None]:
    """Throughput from the database's timestamps: first claim to last completion, and over the
    middle 80 % of completions (the steady state, without the ramp-up and the tail)."""
    n = len(finished)
    if n == 0:
        return {"seconds": None, "jobs_per_s": None, "steady_jobs_per_s": None}
    f = sorted(finished)
    span = f[-1] - min(started)
    lo, hi = int(n * 0.1), max(int(n * 0.9) - 1, 0)
    steady = (hi - lo) / (f[hi] - f[lo]) if hi > lo and f[hi] > f[lo] else None
    return {
        "seconds": round(span, 3),
        "jobs_per_s": round(n / span, 1) if span > 0 else None,
        "steady_jobs_per_s": round(steady, 1) if steady else None,
    }


def enqueue_batch(service: Any, payloads: list[Any], task_type: str) -> None:
    """One batch through the Python client's ``enqueue_many`` (one transaction)."""
    service.enqueue_many([{"task_type": task_type, "payload": p} for p in payloads])


def memory_summary(res: dict[str, Any]) -> dict[str, Any]:
    growth = res.get("growth", {})
    runs = [*res.get("drain", []), *growth.get("finished", []), *growth.get("queued", [])]
    workers = [kb for run in runs for kb in run.get("worker_peak_rss_kb", []) if kb]
    return {
        "api_peak_rss_kb": res.get("enqueue", {}).get("api_peak_rss_kb"),
        "worker_peak_rss_kb": workers,
        "worker_peak_rss_kb_max": max(workers) if workers else None,
    }


# -- reads through the store's public methods ------------------------------------------------


def newest_id(store: Any) -> int:
    page = store.list_jobs(limit=1)
    return page.items[0].id if page.items else 0


def newest_done_id(store: Any) -> int:
    page = store.list_jobs(state=JobState.DONE, limit=1)
    return page.items[0].id if page.items else 0


def queue_empty(store: Any) -> bool:
    """No job pending or running: two index lookups, cheap with millions of finished rows."""
    return not (store.list_jobs(state=JobState.PENDING, limit=1).items
                or store.list_jobs(state=JobState.RUNNING, limit=1).items)


def finished_times(store: Any, first_id: int) -> tuple[list[float], list[float]]:
    """started_at and finished_at (Unix seconds, the database's clock) of the done jobs with
    ids from ``first_id`` on, paged newest first."""
    started: list[float] = []
    finished: list[float] = []
    cursor = None
    while True:
        page = store.list_jobs(state=JobState.DONE, limit=5000, cursor=cursor)
        for job in page.items:
            if job.id < first_id:
                return started, finished
            started.append(job.started_at.timestamp())
            finished.append(job.finished_at.timestamp())
        if page.next_cursor is None:
            return started, finished
        cursor = page.next_cursor
