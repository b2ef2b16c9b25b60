"""Campaigns about the jobs themselves: a faultless baseline, poison pills, a retry storm,
heartbeats of long jobs, and workers with skewed clocks."""

from __future__ import annotations

import shutil
import statistics
from collections import Counter, defaultdict

import httpx

from jobq.chaos.checks import Check, ConnectionWatch, Execution, all_jobs, drain, read_ledger
from jobq.chaos.load import LoadGen
from jobq.chaos.setup import Ctx, Setup, finish, pool_bound, start_workers, work
from jobq.harness import wait_until
from jobq.types import AttemptOutcome, JobState


def baseline(ctx: Ctx) -> list[Check]:
    """2,000 jobs from 16 concurrent clients, 4 workers, no faults."""
    with Setup(ctx, "1-baseline") as s:
        s.cluster.start_api()
        start_workers(s.cluster, 4)
        assert s.cluster.wait_api(), "the API did not come up"
        watch = ConnectionWatch(ctx.admin_url, s.dbs.name, pool_bound(5)).start()
        load = LoadGen(s.cluster.api_url, 16, work(5), ctx.scale(2000, 600)).start()
        return finish(s, load, watch=watch)


def poison_pills(ctx: Ctx) -> list[Check]:
    """Jobs that kill their own worker end failed after max_attempts; the rest keeps flowing."""
    with Setup(ctx, "7-poison-pills") as s:
        s.cluster.start_api()
        s.cluster.start("workers", ["worker", "--processes", "2", "--concurrency", "4"])
        assert s.cluster.wait_api()
        with httpx.Client(base_url=s.cluster.api_url, timeout=10) as c:
            poison = [c.post("/jobs", json={"task_type": "chaos.poison", "max_attempts": 2,
                                            "idempotency_key": f"poison-{i}"}).json()["id"]
                      for i in range(ctx.scale(4, 2))]
        load = LoadGen(s.cluster.api_url, 8, work(20), ctx.scale(600, 200)).start()
        checks = finish(s, load, drain_s=180, expect_failed=set(poison))
        store = s.store()
        try:
            states = [store.get(i) for i in poison]
        finally:
            store.dispose()
        ok = all(j.state is JobState.FAILED and j.attempts == j.max_attempts for j in states)
        checks.append(Check("poison", f"{sum(j.state is JobState.FAILED for j in states)}/"
                            f"{len(states)} poison jobs failed after max_attempts", ok))
        return checks


def retry_storm(ctx: Ctx) -> list[Check]:
    """A downstream that fails for 20 s, then recovers: retries spread out, all done after."""
    from jobq.chaos.ledger import switch_on

    outage = ctx.scale(20, 8)
    cap = 4.0
    with Setup(ctx, "8-retry-storm") as s:
        s.cluster.start_api()
        # Slots to spare: a retry that waits for a free slot would look like a delay past
        # the cap, and this campaign measures the backoff, not the throughput.
        start_workers(s.cluster, 2, concurrency=32, JOBQ_BACKOFF_BASE_SECONDS="0.5",
                      JOBQ_BACKOFF_CAP_SECONDS=str(cap))
        assert s.cluster.wait_api()
        switch_on(s.dbs.ledger_url, "downstream", outage)
        n = 100
        load = LoadGen(s.cluster.api_url, 8, lambda i: {"task_type": "chaos.flaky",
                                                        "max_attempts": 40}, n).start()
        checks = finish(s, load, drain_s=outage + 120)
        ledger = read_ledger(s.dbs.ledger_url)
        by_job: dict[int, list[Execution]] = defaultdict(list)
        for e in ledger:
            by_job[e.job_id].append(e)
        gaps = [b.started - a.ended for runs in by_job.values()
                for a, b in zip(runs, runs[1:]) if a.ended is not None]
        slack = 0.2 + 1.0  # a poll interval and scheduling
        over_cap = sum(1 for g in gaps if g > cap + slack)
        # Waves: retries bunched in one 0.5 s bin; with full jitter no bin holds a big share.
        starts = [e.started for e in ledger if e.attempt > 1]
        bins = Counter(int(t / 0.5) for t in starts)
        peak = max(bins.values()) / max(len(starts), 1) if bins else 0.0
        cv = statistics.pstdev(gaps) / statistics.mean(gaps) if len(gaps) > 2 else 0.0
        checks.append(Check("backoff", f"{len(gaps)} retries, gap mean "
                            f"{statistics.mean(gaps) if gaps else 0:.2f}s cv {cv:.2f}, "
                            f"{over_cap} past the cap ({cap}s), busiest 0.5s bin "
                            f"{peak:.0%} of retries", over_cap == 0 and peak <= 0.15
                            and cv >= 0.3))
        return checks


def heartbeats(ctx: Ctx) -> list[Check]:
    """A long job with heartbeats is never rescued; with heartbeats off (the negative control)
    it is."""
    from jobq.types import NewJob

    checks: list[Check] = []
    for enabled in (True, False):
        name = "9-heartbeats" if enabled else "9-heartbeats-off"
        with Setup(ctx, name) as s:
            store = s.store()
            try:
                env = {"JOBQ_LEASE_SECONDS": "1.5", "JOBQ_RESCUE_INTERVAL_SECONDS": "0.5",
                       "JOBQ_HEARTBEAT_ENABLED": str(enabled).lower()}
                start_workers(s.cluster, 2, concurrency=2, **env)
                wait_until(lambda: len(store.stats(60).workers) == 2, 30)
                job_id = store.enqueue(NewJob("chaos.work", {"ms": 6000})).job.id
                drain(store, 40)
                ledger = [e for e in read_ledger(s.dbs.ledger_url) if e.job_id == job_id]
                job = store.get(job_id)
                if enabled:
                    checks.append(Check("long job, heartbeats on",
                                        f"{len(ledger)} execution(s), {job.attempts} attempt(s), "
                                        f"{job.state}", len(ledger) == 1 and job.attempts == 1
                                        and job.state is JobState.DONE))
                else:
                    seen = len(ledger) > 1 or any(a.outcome is AttemptOutcome.LOST
                                                  for a in job.attempt_log)
                    checks.append(Check("negative control, heartbeats off",
                                        f"{len(ledger)} executions, rescued: {seen} (the check "
                                        "must see the bug)", seen))
            finally:
                store.dispose()
    return checks


def skewed_clocks(ctx: Ctx) -> list[Check]:
    """Workers whose clocks are two hours fast or slow (faketime) change nothing."""
    if shutil.which("faketime") is None:
        return [Check("skewed clocks", "needs faketime (apt-get install faketime)", False)]
    with Setup(ctx, "10-skewed-clocks") as s:
        s.cluster.start_api()
        for i, skew in enumerate(("+2h", "-2h", "+7m")):
            s.cluster.start_worker(i, "--concurrency", "4", prefix=["faketime", "-f", skew],
                                   FAKETIME_DONT_FAKE_MONOTONIC="1")
        assert s.cluster.wait_api()
        load = LoadGen(s.cluster.api_url, 8, work(50), ctx.scale(600, 200)).start()
        checks = finish(s, load)
        store = s.store()
        try:
            jobs = all_jobs(store)
            lost = sum(1 for j in list(jobs.values())[:200] for a in store.get(j.id).attempt_log
                       if a.outcome is AttemptOutcome.LOST)
        finally:
            store.dispose()
        checks.append(Check("leases under skew", f"{lost} leases lost", lost == 0))
        return checks
