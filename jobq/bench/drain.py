"""The drain phase (N queued no-op jobs, W worker processes × C) and the growth series (the
same drain with many finished jobs in the table, and a larger queue)."""

from __future__ import annotations

import time
from typing import Any

from jobq.bench.backends import Backend
from jobq.bench.context import Bench
from jobq.bench.figures import (
    finished_times,
    newest_done_id,
    newest_id,
    queue_empty,
    rates,
    vm_hwm_kb,
)
from jobq.bench.options import PhaseError


def drain_once(bench: Bench, url: str, service: Any, n: int, concurrency: int, tag: str,
                       finished_before: int) -> dict[str, Any]:
    """Queue ``n`` no-op jobs, start the workers, wait for the queue to empty; rates from
    the jobs' own timestamps."""
    o = bench.opts
    label = f"{tag}: drain {n:,} jobs, {o.workers}×{concurrency}"
    if finished_before:
        label += f", {finished_before:,} finished in the table"
    store = service.store
    with bench.step(f"{label} (queueing, untimed)", None):
        first_id = newest_id(store) + 1
        bench.fill(service, n)
    deadline = bench.deadline()
    with bench.processes(url) as procs, bench.step(label, n) as advance:
        workers = [procs.start_worker(i, "--concurrency", str(concurrency))
                   for i in range(o.workers)]
        while True:
            bench.check_deadline(deadline, label)
            bench.alive(workers, label)
            if queue_empty(store):
                break
            advance(min(max(newest_done_id(store) - first_id + 1, 0), n))
            time.sleep(0.25)
        peaks = [vm_hwm_kb(w.pid) for w in workers]
    started, finished = finished_times(store, first_id)
    result = {"jobs": n, "done": len(finished), "workers": o.workers,
              "concurrency": concurrency, "finished_before": finished_before,
              **rates(started, finished), "worker_peak_rss_kb": peaks}
    if len(finished) != n:
        raise PhaseError(f"{label}: only {len(finished)} of {n} jobs ended done")
    return result


def drain_phase(bench: Bench, backend: Backend, tag: str, growth: bool, drain: bool
                ) -> dict[str, Any]:
    """The drain at each concurrency, and the growth series on the first one's database:
    the same drain with more finished jobs in the table, then a larger queue."""
    o = bench.opts
    out: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    finished_series: list[dict[str, Any]] = []
    c0 = o.concurrency[0]
    for idx, c in enumerate(o.concurrency if drain else [c0]):
        url = backend.new_url(f"drain-c{c}")
        service = bench.service(url)
        try:
            base = drain_once(bench, url, service, o.jobs, c, tag, 0)
            runs.append(base)
            if growth and idx == 0:
                finished_series.append(base)
                have = o.jobs
                for level in o.growth_finished:
                    if level > have:
                        with bench.step(f"{tag}: backfill to {level:,} finished jobs",
                                        None):
                            began = time.perf_counter()
                            service.store.backfill_finished(level - have)
                            took = time.perf_counter() - began
                        have = level
                    else:
                        took = 0.0
                    run = drain_once(bench, url, service, o.jobs, c, tag, have)
                    run["backfill_seconds"] = round(took, 2)
                    finished_series.append(run)
                    have += o.jobs
        finally:
            service.close()
            backend.drop(url)
    if drain:
        out["drain"] = runs
    if growth:
        url = backend.new_url("drain-big")
        service = bench.service(url)
        try:
            big = drain_once(bench, url, service, o.growth_queued, c0, tag, 0)
        finally:
            service.close()
            backend.drop(url)
        out["growth"] = {"finished": finished_series, "queued": [runs[0], big]}
    return out
