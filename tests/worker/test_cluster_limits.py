"""Limits across the cluster with real worker processes: four workers, some SIGKILLed and
restarted meanwhile, a queue limited to 2 running at once and three keys limited to 1 each.
The ledger (a file the workers append to, outside the database) shows when each execution
ran; however the claims interleave, no more than the limit ran at once, and every job ran.
On both backends.
"""

from __future__ import annotations

import signal
import time

from jobq.harness import wait_until
from jobq.service import JobService
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.types import JobState
from ledger_tasks import read_ledger
from procs import Procs, env_for

QUEUE_LIMIT, KEYS = 2, ("acct-0", "acct-1", "acct-2")


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end before a start at the same instant)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def test_limits_hold_across_four_workers_with_kills(
    settings: Settings, service: JobService, store: SqlStore, procs: Procs, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    service.set_queue_limits("lim", concurrency=QUEUE_LIMIT)
    limited = [service.enqueue("ledger", {"sleep": 0.15}, queue="lim").job.id
               for _ in range(24)]
    keyed = [service.enqueue("ledger", {"sleep": 0.1}, concurrency_key=KEYS[i % 3]).job.id
             for i in range(18)]
    plain = [service.enqueue("ledger", {"sleep": 0.05}).job.id for _ in range(12)]
    ledger = str(tmp_path / "ledger")
    env = env_for(settings.database_url, ledger, JOBQ_QUEUES="default,lim",
                  JOBQ_CONCURRENCY="4")
    workers = [procs.worker(env) for _ in range(4)]
    killed: dict[int, float] = {}
    for n in range(2):  # two kills, each of a worker that is running something
        time.sleep(1.0)
        victim = workers[n]
        victim.send_signal(signal.SIGKILL)
        killed[victim.pid] = time.time()
        victim.wait(10)
        workers[n] = procs.worker(env)

    every = limited + keyed + plain
    assert wait_until(lambda: all(store.get(i).state is JobState.DONE for i in every), 120), \
        [store.get(i).state.value for i in every]

    starts: dict[tuple[int, int, int], float] = {}
    runs: dict[int, list[tuple[float, float]]] = {}
    for kind, job_id, attempt, pid, at in read_ledger(ledger):
        if kind == "start":
            starts[(job_id, attempt, pid)] = at
        else:
            runs.setdefault(job_id, []).append((starts.pop((job_id, attempt, pid)), at))
    for (job_id, _attempt, pid), began in starts.items():  # cut short by a kill
        assert pid in killed, f"job {job_id} started in {pid}, which was not killed, and never ended"
        runs.setdefault(job_id, []).append((began, killed[pid]))
    assert set(every) <= set(runs), "a job never ran"

    lim_runs = [r for i in limited for r in runs[i]]
    assert most_at_once(lim_runs) == QUEUE_LIMIT  # reached, never passed
    jobs = {i: store.get(i) for i in keyed}
    for key in KEYS:
        lane = [r for i, job in jobs.items() if job.concurrency_key == key for r in runs[i]]
        assert len(lane) >= 6 and most_at_once(lane) == 1, key
    # The other jobs were not held back: they ran side by side.
    assert most_at_once([r for i in plain for r in runs[i]]) > 1
