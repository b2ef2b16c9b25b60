"""The pickup-latency phase: idle workers, jobs enqueued one by one a few ms apart, from the
return of the enqueue call to the start of the handler."""

from __future__ import annotations

import time
from typing import Any

from jobq.bench.backends import Backend
from jobq.bench.context import Bench
from jobq.bench.figures import percentile, queue_empty
from jobq.bench.options import STAMP, PhaseError
from jobq.harness import wait_until


def pickup_phase(bench: Bench, backend: Backend, tag: str) -> dict[str, Any]:
    o = bench.opts
    c = o.concurrency[0]
    url = backend.new_url("pickup")
    service = bench.service(url)
    store = service.store
    settings = service.settings
    samples: list[tuple[int, float]] = []
    try:
        with bench.processes(url) as procs:
            workers = [procs.start_worker(i, "--concurrency", str(c))
                       for i in range(o.workers)]
            with bench.step(f"{tag}: pickup latency: starting {o.workers} workers", None):
                if not wait_until(lambda: len(store.stats(
                        live_worker_seconds=2 * settings.lease_seconds).workers) >= o.workers,
                        60, 0.2):
                    bench.alive(workers, "pickup")
                    raise PhaseError("pickup: the workers did not register within 60s")
                time.sleep(1.5)  # idle: past their first empty claim, waiting
            deadline = bench.deadline()
            gap = o.pickup_gap_ms / 1000
            with bench.step(f"{tag}: pickup latency, {o.pickup_samples} jobs "
                            f"{o.pickup_gap_ms:.0f} ms apart", o.pickup_samples) as adv:
                nxt = time.monotonic()
                for k in range(o.pickup_samples):
                    bench.check_deadline(deadline, "pickup")
                    result = service.enqueue(STAMP, {"k": k})
                    samples.append((result.job.id, time.time()))
                    adv(k + 1)
                    nxt += gap
                    time.sleep(max(nxt - time.monotonic(), 0))
                while not queue_empty(store):
                    bench.check_deadline(deadline, "pickup")
                    bench.alive(workers, "pickup")
                    time.sleep(0.1)
        latencies = []
        for job_id, enqueued in samples:
            job = store.get(job_id, with_attempts=False)
            if not isinstance(job.result, (int, float)):
                raise PhaseError(f"pickup: job {job_id} ended {job.state} without a stamp")
            latencies.append((job.result - enqueued) * 1000)
    finally:
        service.close()
        backend.drop(url)
    return {
        "samples": len(latencies), "gap_ms": o.pickup_gap_ms, "workers": o.workers,
        "concurrency": c,
        "poll_interval_seconds": settings.poll_interval_seconds,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "min_ms": round(min(latencies), 2),
    }
