"""Periodic jobs in the store, on both backends: each tick enqueued once under concurrent
scheduler passes, missed ticks skipped or caught up, changed and removed schedules."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, update

from jobq.schedules import Schedule, make_schedule
from jobq.store import SqlStore
from jobq.store.tables import schedules
from jobq.types import JobState

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _set_next_run(store: SqlStore, name: str, when: datetime) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(schedules).where(schedules.c.name == name)
                     .values(next_run_at=when))


def _tick_jobs(store: SqlStore, name: str) -> dict[datetime, list[int]]:
    """The jobs of a schedule's ticks, by tick (read from their keys)."""
    prefix = f"schedule:{name}:"
    found: dict[datetime, list[int]] = {}
    page = store.list_jobs(limit=500)
    for job in page.items:
        if job.idempotency_key and job.idempotency_key.startswith(prefix):
            tick = datetime.fromisoformat(job.idempotency_key.removeprefix(prefix))
            assert job.run_at == tick, "a tick's job runs at the tick"
            found.setdefault(tick, []).append(job.id)
    return found


def _grid(step: float, low: datetime, high: datetime) -> list[datetime]:
    """The multiples of ``step`` seconds since the epoch from ``low`` to ``high``, inclusive
    (computed here, independently of the code under test)."""
    us = int(step * 1_000_000)
    first = -(-int((low - EPOCH) / timedelta(microseconds=1)) // us)
    out = []
    n = first
    while (t := EPOCH + timedelta(microseconds=n * us)) <= high:
        out.append(t)
        n += 1
    return out


def test_declare_puts_the_first_tick_next_and_lists_it(store: SqlStore) -> None:
    spec = make_schedule("echo", 60, name="minutely", payload={"p": 1}, queue="q1")
    assert store.declare_schedules([spec]) == {"minutely": "new"}
    assert store.declare_schedules([spec]) == {"minutely": "same"}
    (row,) = store.list_schedules()
    now = store.ping()
    assert (row.name, row.task_type, row.queue, row.expression) == (
        "minutely", "echo", "q1", "every 60s")
    assert row.payload == {"p": 1} and row.last_run_at is None and row.last_job_id is None
    assert now < row.next_run_at <= now + timedelta(seconds=60)
    assert row.next_run_at.second == 0 and row.next_run_at.microsecond == 0
    assert store.list_schedules(queues=["other"]) == []
    assert [s.name for s in store.list_schedules(queues=["q1"])] == ["minutely"]
    # Nothing is due yet: a pass enqueues nothing and says when the next tick is.
    done = store.run_schedules([spec])
    assert done.fired == [] and done.next_run_at == row.next_run_at


def test_each_tick_is_enqueued_once_under_concurrent_passes(store: SqlStore) -> None:
    spec = make_schedule("echo", 1, name="every-second")
    store.declare_schedules([spec])
    away = store.ping() - timedelta(seconds=20)
    start = _grid(1, away, away + timedelta(seconds=1))[0]
    _set_next_run(store, "every-second", start)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    fired: list[datetime] = []

    def scheduler() -> None:
        try:
            barrier.wait(10)
            for _ in range(5):
                fired.extend(f.tick for f in store.run_schedules([spec]).fired if f.created)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    end = store.ping()
    jobs = _tick_jobs(store, "every-second")
    assert sorted(fired) == sorted(jobs), "every created tick is one job"
    assert all(len(ids) == 1 for ids in jobs.values())
    # Every tick from the first due one on, without a gap, up to the last pass.
    ticks = sorted(jobs)
    assert ticks[0] == start and ticks == _grid(1, start, ticks[-1])
    assert end - ticks[-1] < timedelta(seconds=5)
    (row,) = store.list_schedules()
    assert row.last_run_at == ticks[-1] and row.last_job_id == jobs[ticks[-1]][0]
    assert row.next_run_at == ticks[-1] + timedelta(seconds=1)


def test_missed_ticks_are_skipped_by_default(store: SqlStore) -> None:
    spec = make_schedule("echo", 10, name="ten")  # grace: 60 s
    store.declare_schedules([spec])
    away = store.ping() - timedelta(hours=1)
    _set_next_run(store, "ten", _grid(10, away, away + timedelta(seconds=10))[0])
    done = store.run_schedules([spec])
    jobs = _tick_jobs(store, "ten")
    # Only the ticks of the last minute (the grace); an hour of others was skipped.
    assert sorted(jobs) == _grid(10, done.now - timedelta(seconds=60), done.now)
    assert 6 <= len(jobs) <= 7
    assert [name for name, _ in done.missed] == ["ten"]
    (row,) = store.list_schedules()
    assert row.next_run_at == _grid(10, done.now + timedelta(microseconds=1),
                                    done.now + timedelta(seconds=10))[0]
    assert store.run_schedules([spec]).fired == []  # handled: nothing twice


def test_missed_ticks_are_caught_up_when_the_schedule_says_so(store: SqlStore) -> None:
    spec = make_schedule("echo", 10, name="ten", catch_up=True)
    store.declare_schedules([spec])
    away = store.ping() - timedelta(minutes=30)
    first = _grid(10, away, away + timedelta(seconds=10))[0]
    _set_next_run(store, "ten", first)
    passes = 0
    while True:  # 181 ticks: more than one pass takes
        done = store.run_schedules([spec])
        passes += 1
        if not done.more:
            break
    assert passes == 2 and done.missed == []
    jobs = _tick_jobs(store, "ten")
    assert sorted(jobs) == _grid(10, first, done.now)
    assert all(len(ids) == 1 for ids in jobs.values())
    assert len(jobs) >= 180


def test_a_changed_expression_starts_afresh_and_the_old_definition_stands_aside(
        store: SqlStore) -> None:
    old = make_schedule("echo", 1, name="s")
    new = make_schedule("echo", 2, name="s")
    store.declare_schedules([old])
    start = store.ping() - timedelta(seconds=5)
    _set_next_run(store, "s", _grid(2, start, start + timedelta(seconds=2))[0])
    assert len(store.run_schedules([old]).fired) >= 4
    before = _tick_jobs(store, "s")
    # A worker of the new version starts: its definition is now the row's.
    assert store.declare_schedules([new]) == {"s": "retimed"}
    (row,) = store.list_schedules()
    now = store.ping()
    # The next tick of the new grid after the declaration (which may be a hair before now).
    assert row.expression == "every 2s"
    assert row.declared_at < row.next_run_at <= row.declared_at + timedelta(seconds=2)
    # The old workers no longer run it (nor touch it back).
    _set_next_run(store, "s", _grid(2, now - timedelta(seconds=4), now)[0])
    assert store.run_schedules([old]).fired == []
    store.touch_schedules([old])
    assert store.list_schedules()[0].expression == "every 2s"
    # The new definition runs it; a tick it shares with the old one is not enqueued again.
    done = store.run_schedules([new])
    assert done.fired
    shared = [f for f in done.fired if f.tick in before]
    assert shared and all(not f.created for f in shared)
    jobs = _tick_jobs(store, "s")
    assert all(len(ids) == 1 for ids in jobs.values())


def test_a_changed_payload_keeps_the_schedule_in_place(store: SqlStore) -> None:
    store.declare_schedules([make_schedule("echo", 60, name="s", payload=1)])
    (before,) = store.list_schedules()
    assert store.declare_schedules([make_schedule("echo", 60, name="s", payload=2)]) == {
        "s": "changed"}
    (after,) = store.list_schedules()
    assert after.payload == 2 and after.next_run_at == before.next_run_at


def test_removed_schedules_are_run_by_no_one_and_pruned_once_undeclared(
        store: SqlStore) -> None:
    kept: Schedule = make_schedule("echo", 1, name="kept")
    gone: Schedule = make_schedule("echo", 1, name="gone")
    store.declare_schedules([kept, gone])
    past = store.ping() - timedelta(seconds=3)
    _set_next_run(store, "gone", _grid(1, past, past + timedelta(seconds=1))[0])
    store.run_schedules([kept])  # the code declares only "kept" now
    assert _tick_jobs(store, "gone") == {}
    assert store.prune_schedules(3600) == 0
    with store.engine.begin() as conn:
        conn.execute(update(schedules).values(declared_at=past - timedelta(hours=2)))
    store.touch_schedules([kept])  # a worker that declares it says so
    assert store.prune_schedules(3600) == 1
    assert [s.name for s in store.list_schedules()] == ["kept"]
    # A row deleted by hand is put back by the next touch.
    with store.engine.begin() as conn:
        conn.execute(delete(schedules))
    store.touch_schedules([kept])
    assert [s.name for s in store.list_schedules()] == ["kept"]


def test_tick_jobs_are_ordinary_jobs(store: SqlStore) -> None:
    spec = make_schedule("echo", 1, name="s", payload={"x": 1}, queue="ticks")
    spec = Schedule(**{**spec.__dict__, "max_attempts": 7})
    store.declare_schedules([spec])
    _set_next_run(store, "s", _grid(1, store.ping() - timedelta(seconds=1), store.ping())[0])
    fired = store.run_schedules([spec]).fired
    job = store.get(fired[0].job_id)
    assert (job.task_type, job.payload, job.queue, job.max_attempts, job.state) == (
        "echo", {"x": 1}, "ticks", 7, JobState.PENDING)
