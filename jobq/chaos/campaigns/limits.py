"""Limits across the cluster under worker kills: a queue limited to 3 running at once and
four lanes limited to 1, served by 4 workers that are SIGKILLed at random moments and
restarted. From the ledger (every execution, recorded outside jobq): never more than the limit
ran at once, and nothing was lost."""

from __future__ import annotations

import signal
import time

from jobq.chaos.checks import Check, Execution, all_jobs, read_ledger, registered_pids
from jobq.chaos.setup import Ctx, Setup, finish, start_workers
from jobq.harness import wait_until
from jobq.types import NewJob

QUEUE, QUEUE_LIMIT = "limited", 3
KEYS = ("lane-0", "lane-1", "lane-2", "lane-3")


def limits_under_kills(ctx: Ctx) -> list[Check]:
    """A queue limited to 3 and four lanes of 1, served by 4 workers SIGKILLed and restarted."""
    n_limited, n_keyed, kills = ctx.scale(150, 60), ctx.scale(120, 48), ctx.scale(8, 4)
    with Setup(ctx, "17-limits-kills") as s:
        store = s.store()
        try:
            store.set_queue_limits(QUEUE, concurrency=QUEUE_LIMIT, rate=None, burst=None)
            work = {"ms": 150}
            store.enqueue_many([NewJob(task_type="chaos.work", payload=work, queue=QUEUE)
                                for _ in range(n_limited)])
            store.enqueue_many([NewJob(task_type="chaos.work", payload=work,
                                       concurrency_key=KEYS[i % len(KEYS)], concurrency_limit=1)
                                for i in range(n_keyed)])
            workers = start_workers(s.cluster, 4, JOBQ_QUEUES=f"default,{QUEUE}")
            wait_until(lambda: len(registered_pids(store)) == 4, 60, 0.2)
            killed: dict[int, float] = {}
            for _ in range(kills):
                time.sleep(ctx.rng.uniform(0.5, 2.0))
                victim = ctx.rng.choice(workers)
                killed[victim.pid] = time.time()
                victim.signal(signal.SIGKILL)
                s.cluster.restart(victim)
            checks = finish(s, None, drain_s=120)
            checks += _limit_checks(read_ledger(s.dbs.ledger_url), all_jobs(store), killed)
            return checks
        finally:
            store.dispose()


def _most_at_once(runs: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in runs] + [(b, -1) for _, b in runs])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def _limit_checks(ledger: list[Execution], jobs: dict, killed: dict[int, float]) -> list[Check]:
    """The most executions at once in the limited queue and in each lane. An execution cut
    short by a kill ends when its process was killed; one that never ended otherwise is a
    violation in itself (it would still be running)."""
    runs: dict[int, list[tuple[float, float]]] = {}
    open_ended = 0
    for e in ledger:
        end = e.ended if e.ended is not None else killed.get(e.pid)
        if end is None:
            open_ended += 1
            continue
        runs.setdefault(e.job_id, []).append((e.started, end))
    queue_runs = [r for j in jobs.values() if j.queue == QUEUE for r in runs.get(j.id, [])]
    most = _most_at_once(queue_runs)
    lanes = {k: _most_at_once([r for j in jobs.values() if j.concurrency_key == k
                               for r in runs.get(j.id, [])]) for k in KEYS}
    return [
        Check("queue limit", f"at most {most} of queue {QUEUE!r} ran at once (limit "
              f"{QUEUE_LIMIT}) over {len(queue_runs)} executions", 0 < most <= QUEUE_LIMIT),
        Check("lane limits", "most at once per lane: " + ", ".join(
            f"{k} {n}" for k, n in lanes.items()) + " (limit 1)",
              all(n == 1 for n in lanes.values())),
        Check("unended executions", f"{open_ended} executions neither ended nor killed",
              open_ended == 0),
    ]
