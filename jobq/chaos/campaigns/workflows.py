"""Workflows under worker kills: chains of 5 and groups of 4 with a callback, served by 4
workers that are SIGKILLed at random moments (often while they finish a parent) and
restarted. Nothing may be stranded: every job ends done, no job still waits, and from the
ledger (every execution, recorded outside jobq) no child started before all of its parents
had finished an execution that succeeded."""

from __future__ import annotations

import signal
import time

from jobq.chaos.checks import (
    Check,
    Execution,
    all_jobs,
    busy_pids,
    read_ledger,
    registered_pids,
)
from jobq.chaos.setup import Ctx, Setup, finish, start_workers
from jobq.harness import wait_until
from jobq.types import JobState, NewJob

WORK = {"ms": 200}
CHAIN = 5


def _graphs(chains: int, groups: int, attempts: int) -> list[NewJob]:
    def work(**how: object) -> NewJob:
        return NewJob("chaos.work", WORK, max_attempts=attempts, **how)  # type: ignore[arg-type]

    news: list[NewJob] = []
    for _ in range(chains):
        base = len(news)
        news.append(work())
        news += [work(depends_on_items=(base + k,)) for k in range(CHAIN - 1)]
    for _ in range(groups):
        base = len(news)
        news += [work() for _ in range(4)]
        news.append(work(depends_on_items=tuple(range(base, base + 4)),
                         on_parent_failure="run"))
    return news


def workflows_under_kills(ctx: Ctx) -> list[Check]:
    """Chains and fan-in groups, served by 4 workers SIGKILLed and restarted."""
    chains, groups, kills = ctx.scale(40, 16), ctx.scale(30, 12), ctx.scale(8, 4)
    with Setup(ctx, "18-workflows-kills") as s:
        store = s.store()
        try:
            # More attempts than kills: the kills go to busy workers, and the jobs rescued
            # from one are often claimed together by another, the next kill's likeliest
            # victim; a job cut short by every kill must still have an attempt left.
            graphs = _graphs(chains, groups, attempts=kills + 2)
            ids = [r.job.id for r in store.enqueue_many(graphs)]
            workers = start_workers(s.cluster, 4)
            wait_until(lambda: len(registered_pids(store)) == 4, 60, 0.2)
            for _ in range(kills):
                time.sleep(ctx.rng.uniform(0.2, 0.8))
                # A worker in the middle of an execution (the ledger says which), so that the
                # kill cuts a parent (or a callback) short; any worker if none is busy soon.
                busy: list = []
                wait_until(lambda: busy.extend(
                    w for w in workers if w.pid in busy_pids(s.dbs.ledger_url)) or busy, 5, 0.05)
                victim = ctx.rng.choice(busy or workers)
                victim.signal(signal.SIGKILL)
                s.cluster.restart(victim)
            checks = finish(s, None, drain_s=180)
            wait_until(lambda: not _waiting(store), 30, 0.5)
            jobs = all_jobs(store)
            parents = {i: store.relatives(i)[0] for i in ids}
            checks += _graph_checks(read_ledger(s.dbs.ledger_url), jobs, parents)
            return checks
        finally:
            store.dispose()


def _waiting(store) -> int:  # type: ignore[no-untyped-def]
    return store.stats(live_worker_seconds=60).jobs["waiting"]


def _graph_checks(ledger: list[Execution], jobs: dict, parents: dict[int, list[int]]
                  ) -> list[Check]:
    waiting = [j for j in jobs.values() if j.state is JobState.WAITING]
    not_done = [j for j in jobs.values() if j.state is not JobState.DONE]
    ok_end: dict[int, float] = {}
    first_start: dict[int, float] = {}
    for e in ledger:
        first_start[e.job_id] = min(first_start.get(e.job_id, e.started), e.started)
        if e.ended is not None and e.outcome == "ok":
            ok_end[e.job_id] = min(ok_end.get(e.job_id, e.ended), e.ended)
    early = [child for child, ps in parents.items() if ps and child in first_start and any(
        p not in ok_end or first_start[child] < ok_end[p] for p in ps)]
    children = sum(1 for ps in parents.values() if ps)
    cut = sum(1 for e in ledger if e.ended is None)
    return [
        Check("kills", f"{cut} executions cut short by a kill", cut > 0),
        Check("stranded", f"{len(waiting)} jobs still waiting after the drain", not waiting),
        Check("all done", f"{len(jobs) - len(not_done)} of {len(jobs)} done",
              not not_done),
        Check("order", f"{len(early)} of {children} children started before a parent had "
              "finished", not early),
    ]
