"""Periodic jobs with real worker processes: however many workers run, and whichever dies,
each tick of a schedule is enqueued once. Both backends."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta

import pytest

from jobq.harness import wait_for
from jobq.store import SqlStore
from jobq.types import JobState
from procs import Procs, env_for

pytestmark = pytest.mark.slow

NAME = "every-second"
PREFIX = f"schedule:{NAME}:"


def _tick_jobs(store: SqlStore) -> dict[datetime, list]:
    found: dict[datetime, list] = {}
    cursor = None
    while True:
        page = store.list_jobs(limit=500, cursor=cursor)
        for job in page.items:
            if job.idempotency_key and job.idempotency_key.startswith(PREFIX):
                tick = datetime.fromisoformat(job.idempotency_key.removeprefix(PREFIX))
                found.setdefault(tick, []).append(job)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def test_three_workers_enqueue_each_tick_once_and_a_sigkill_changes_nothing(
    store: SqlStore, db_url: str, procs: Procs, tmp_path
) -> None:
    env = env_for(db_url, str(tmp_path / "ledger.txt"), JOBQ_TASKS="ledger_tasks,tick_tasks")
    workers = [procs.worker(env) for _ in range(3)]
    try:
        wait_for(lambda: _tick_jobs(store), 30, "the first tick's job", interval=0.2)
        time.sleep(7)
        os.kill(workers[0].pid, signal.SIGKILL)
        killed_at = store.ping()
        workers[0].wait(10)
        time.sleep(11)
    except AssertionError:
        print(procs.logs())
        raise
    for w in workers[1:]:
        os.kill(w.pid, signal.SIGTERM)
    for w in workers[1:]:
        assert w.wait(20) == 0, procs.logs()

    jobs = _tick_jobs(store)
    ticks = sorted(jobs)
    twice = {t: [j.id for j in js] for t, js in jobs.items() if len(js) > 1}
    assert not twice, f"ticks enqueued twice: {twice}"
    expected = [ticks[0] + timedelta(seconds=n)
                for n in range(int((ticks[-1] - ticks[0]).total_seconds()) + 1)]
    assert ticks == expected, (
        f"ticks missing: {sorted(set(expected) - set(ticks))}\n{procs.logs()}")
    assert len(ticks) >= 15, ticks
    assert ticks[-1] >= killed_at + timedelta(seconds=8), "scheduling stopped with the kill"
    for tick, (job,) in jobs.items():
        assert job.run_at == tick and job.payload == {"tick": True}
        # Enqueued on time: within a few seconds of its tick, on a loaded machine too.
        assert job.created_at - tick < timedelta(seconds=5), (tick, job.created_at)
    # And run: all but the last few (a stopping worker may have released those).
    for tick in ticks[:-3]:
        assert jobs[tick][0].state is JobState.DONE or store.get(
            jobs[tick][0].id).state is JobState.DONE, tick
    (row,) = store.list_schedules()
    assert row.last_run_at == ticks[-1] and row.last_job_id == jobs[ticks[-1]][0].id
