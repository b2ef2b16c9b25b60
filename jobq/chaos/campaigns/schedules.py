"""Periodic jobs under worker kills: however many workers run, and whichever dies, each tick is
enqueued once, none is missed, and each runs (at least once, never twice at once)."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta

from jobq.chaos.checks import Check, all_jobs, registered_pids
from jobq.chaos.setup import Ctx, Setup, finish, start_workers
from jobq.chaos.tick_tasks import NAME
from jobq.harness import wait_until

PREFIX = f"schedule:{NAME}:"


def periodic_kills(ctx: Ctx) -> list[Check]:
    """A 1 s schedule served by 4 workers, SIGKILLed at random moments and restarted."""
    kills, span = ctx.scale(10, 5), ctx.scale(40.0, 20.0)
    with Setup(ctx, "16-periodic-kills") as s:
        workers = start_workers(s.cluster, 4, JOBQ_TASKS="jobq.chaos.tasks,jobq.chaos.tick_tasks")
        store = s.store()
        try:
            wait_until(lambda: len(registered_pids(store)) == 4, 60, 0.2)
            began = time.monotonic()
            last_kill = None
            for _ in range(kills):
                time.sleep(ctx.rng.uniform(0.5, 2 * span / kills - 0.5))
                victim = ctx.rng.choice(workers)
                victim.signal(signal.SIGKILL)
                last_kill = store.ping()
                s.cluster.restart(victim)
            time.sleep(max(0.0, span - (time.monotonic() - began)) + 3)
            for w in s.cluster.workers():  # stop ticking before the drain
                w.signal(signal.SIGTERM)
            wait_until(lambda: not any(w.alive() for w in s.cluster.workers()), 30, 0.1)
            s.cluster.start_worker(9, "--concurrency", "8")  # a plain one runs what is left
            checks = finish(s, None, drain_s=60)
            checks.append(_tick_check(all_jobs(store), last_kill))
            return checks
        finally:
            store.dispose()


def _tick_check(jobs: dict, last_kill: datetime | None) -> Check:
    ticks: dict[datetime, int] = {}
    for job in jobs.values():
        if job.idempotency_key and job.idempotency_key.startswith(PREFIX):
            tick = datetime.fromisoformat(job.idempotency_key.removeprefix(PREFIX))
            ticks[tick] = ticks.get(tick, 0) + 1
    if not ticks:
        return Check("ticks", "no tick was enqueued", False)
    first, last = min(ticks), max(ticks)
    expected = {first + timedelta(seconds=n)
                for n in range(int((last - first).total_seconds()) + 1)}
    missed = len(expected - set(ticks))
    doubled = sum(1 for n in ticks.values() if n > 1)
    after = (last - last_kill).total_seconds() if last_kill else 0.0
    return Check("ticks", f"{len(ticks)} ticks over {(last - first).total_seconds():.0f}s: "
                 f"{missed} missed, {doubled} doubled; ticking {after:.1f}s after the last kill",
                 missed == 0 and doubled == 0 and len(ticks) >= 10 and after >= 2)
