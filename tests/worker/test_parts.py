"""The worker's parts driven in-process against a real store (SQLite and PostgreSQL): each test
calls one part's body directly and asserts what the database then holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, update

import jobq
from jobq.errors import StoreUnavailable
from jobq.registry import TaskRegistry
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.store.tables import workers
from jobq.types import AttemptOutcome, JobState
from jobq.worker import Worker
from jobq.worker.loop import run_loop
from factories import enqueue, enqueue_many

#: Handlers that saw their cancellation, by job id.
cancelled: set[int] = set()


async def ok(payload: Any) -> Any:
    return payload


async def hold(payload: Any, ctx: Any) -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        cancelled.add(ctx.job_id)
        raise


async def boom(payload: Any) -> None:
    raise ValueError("boom")


#: Job ids of ``def`` handlers that saw ctx.stopped, and how long they waited for it.
saw_stop: dict[int, float] = {}


def wait_for_stop(payload: Any, ctx: Any) -> None:
    began = time.monotonic()
    if ctx.stopped.wait(30):
        saw_stop[ctx.job_id] = time.monotonic() - began


async def snooze(payload: Any, ctx: Any) -> Any:
    """Snoozes ``payload["times"]`` times (counted in ``snoozed``), then returns its attempt."""
    seen = snoozed.setdefault(ctx.job_id, [])
    if len(seen) < payload["times"]:
        seen.append(ctx.attempt)
        raise jobq.Snooze(payload.get("seconds", 0))
    return {"attempt": ctx.attempt}


#: The attempt numbers each snoozing job saw, by job id.
snoozed: dict[int, list[int]] = {}


@pytest.fixture(autouse=True)
def _forget_snoozes() -> None:
    snoozed.clear()  # ids start again from 1 on each backend's fresh database


def give_up(payload: Any) -> None:  # a def handler: the signal crosses the thread too
    raise jobq.Cancel(f"not wanted any more: {payload}")


class Permanent(Exception):
    pass


def raise_named(payload: Any) -> None:
    raise {"timeout": TimeoutError, "permanent": Permanent, "value": ValueError}[payload](payload)


def registry() -> TaskRegistry:
    reg = TaskRegistry()
    for name, fn in (("ok", ok), ("hold", hold), ("boom", boom), ("wait", wait_for_stop),
                     ("snooze", snooze), ("give_up", give_up)):
        reg.register(name, fn)
    reg.register("snooze_twice_at_most", snooze, max_snoozes=2)
    reg.register("picky", raise_named, retry_on=(TimeoutError,), backoff=lambda a: 60.0 * a)
    reg.register("discards", raise_named, discard_on=Permanent, backoff_base=0,
                 backoff_cap=0)
    return reg


@pytest.fixture
def fast(db_url: str) -> Settings:
    return load_settings(
        database_url=db_url, lease_seconds=3, heartbeat_interval_seconds=0.2,
        rescue_interval_seconds=0.2, poll_interval_seconds=0.05, shutdown_grace_seconds=0.3,
        backoff_base_seconds=0.05, backoff_cap_seconds=0.1,
    )


def run(store: SqlStore, settings: Settings, test: Callable[[Worker], Awaitable[None]],
        concurrency: int = 2) -> None:
    """``test(worker)`` on a fresh event loop; the worker's threads are shut down after."""
    async def main() -> None:
        worker = Worker(store, registry(), settings, concurrency=concurrency)
        try:
            await test(worker)
        finally:
            worker.db.close()

    asyncio.run(main())


async def settled(worker: Worker) -> None:
    """Until every handler has returned (its outcome in the outbox, not yet written)."""
    deadline = time.monotonic() + 10
    while len(worker.slots):
        assert time.monotonic() < deadline, "handlers did not finish"
        await asyncio.sleep(0.01)


def states(store: SqlStore, ids: list[int]) -> dict[JobState, int]:
    counts: dict[JobState, int] = {}
    for job_id in ids:
        state = store.get(job_id, with_attempts=False).state
        counts[state] = counts.get(state, 0) + 1
    return counts


def test_the_fetcher_never_claims_more_than_the_free_slots(
    store: SqlStore, fast: Settings
) -> None:
    ids = [j.id for j in enqueue_many(store, 5, task_type="hold")]

    async def test(worker: Worker) -> None:
        await worker.fetcher.fetch()
        await worker.fetcher.fetch()  # full: claims nothing, waits for a slot
        assert len(worker.slots) == 2
        assert states(store, ids) == {JobState.RUNNING: 2, JobState.PENDING: 3}

    run(store, fast, test)


def test_the_fetcher_claims_nothing_while_heartbeats_are_overdue(
    store: SqlStore, fast: Settings
) -> None:
    """Claims that get through while beats do not would only be fenced and charged."""
    job = enqueue(store, task_type="ok")

    async def test(worker: Worker) -> None:
        worker.slots.beat_confirmed = time.monotonic() - fast.lease_seconds
        await worker.fetcher.fetch()
        assert len(worker.slots) == 0
        assert store.get(job.id, with_attempts=False).state is JobState.PENDING
        await worker.heartbeat.beat()  # a beat gets through: claims resume
        await worker.fetcher.fetch()
        await settled(worker)
        assert store.get(job.id, with_attempts=False).state is JobState.RUNNING

    run(store, fast, test)


def test_unwritten_outcomes_beyond_one_batch_hold_claims_back(
    store: SqlStore, fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [j.id for j in enqueue_many(store, 8, task_type="ok")]
    batches: list[int] = []
    complete_many = store.complete_many
    monkeypatch.setattr(store, "complete_many",
                        lambda finished: batches.append(len(finished)) or complete_many(finished))

    async def test(worker: Worker) -> None:
        for _ in range(3):  # 2 claimed, then 2 more (outbox 2: no backlog), then none (4: 2)
            await worker.fetcher.fetch()
            await settled(worker)
        assert len(worker.outbox) == 4 and worker.slots.free() == 0
        assert states(store, ids) == {JobState.RUNNING: 4, JobState.PENDING: 4}
        await worker.completer.flush()
        assert batches == [4], "the successes were not written in one statement"
        assert len(worker.outbox) == 0 and worker.slots.free() == 2

    run(store, fast, test)
    assert states(store, ids) == {JobState.DONE: 4, JobState.PENDING: 4}


def test_the_outbox_is_fenced_and_failures_are_retried_with_backoff(
    store: SqlStore, fast: Settings
) -> None:
    done, lost = enqueue(store, task_type="ok", payload=1), enqueue(store, task_type="ok")
    failing = enqueue(store, task_type="boom")

    async def test(worker: Worker) -> None:
        await worker.fetcher.fetch()
        await settled(worker)
        store.cancel(lost.id)  # its lease is gone before the outcome is written
        await worker.completer.flush()
        assert len(worker.outbox) == 0

    run(store, fast, test, concurrency=3)
    assert store.get(done.id).state is JobState.DONE and store.get(done.id).result == 1
    after = store.get(lost.id)
    assert after.state is JobState.CANCELLED and after.result is None
    retried = store.get(failing.id)
    assert retried.state is JobState.PENDING and retried.attempts == 1
    assert "ValueError: boom" in (retried.last_error or "")
    assert [a.outcome for a in retried.attempt_log] == [AttemptOutcome.ERROR]


def test_the_heartbeat_takes_a_lost_job_away_and_its_late_outcome_is_refused(
    store: SqlStore, fast: Settings
) -> None:
    job = enqueue(store, task_type="hold")
    finished = enqueue(store, task_type="ok")

    async def test(worker: Worker) -> None:
        await worker.fetcher.fetch()
        await asyncio.sleep(0.05)  # ok returns; hold runs on
        (running,) = worker.slots.running()
        assert running.claimed.job.id == job.id and len(worker.outbox) == 1
        store.cancel(job.id)
        store.cancel(finished.id)
        await worker.heartbeat.beat()
        await settled(worker)
        assert running.lost and job.id in cancelled, "the handler was not stopped"
        assert len(worker.outbox) == 0, "a lost job's outcome is still to be written"
        lease = running.claimed.lease
        assert await worker.db.call(store.complete_many, [(lease, "late")]) == set()

    run(store, fast, test)
    for j in (job, finished):
        after = store.get(j.id)
        assert after.state is JobState.CANCELLED and after.result is None


def test_a_def_handler_is_told_through_its_context_when_its_job_is_taken_away(
    store: SqlStore, fast: Settings
) -> None:
    """A thread cannot be interrupted: a long ``def`` handler learns from ``ctx.stopped``."""
    job = enqueue(store, task_type="wait")

    async def test(worker: Worker) -> None:
        await worker.fetcher.fetch()
        await asyncio.sleep(0.1)
        store.cancel(job.id)
        await worker.heartbeat.beat()
        deadline = time.monotonic() + 5
        while job.id not in saw_stop:
            assert time.monotonic() < deadline, "the def handler was never told"
            await asyncio.sleep(0.01)
        await settled(worker)

    run(store, fast, test)
    assert saw_stop[job.id] < 5
    assert store.get(job.id).state is JobState.CANCELLED


def test_the_heartbeat_leaves_an_outcome_being_written_to_its_fenced_write(
    store: SqlStore, fast: Settings
) -> None:
    job = enqueue(store, task_type="ok")

    async def test(worker: Worker) -> None:
        await worker.fetcher.fetch()
        await settled(worker)
        store.cancel(job.id)
        worker.outbox.start_batch(10)  # as if the complete loop were writing it right now
        await worker.heartbeat.beat()
        assert len(worker.outbox) == 1
        worker.outbox.end_batch()
        await worker.completer.flush()  # refused by the store, then forgotten
        assert len(worker.outbox) == 0

    run(store, fast, test)
    assert store.get(job.id).state is JobState.CANCELLED


def test_a_worker_whose_heartbeats_hang_stops_its_handler_before_its_lease_can_expire(
    store: SqlStore, fast: Settings
) -> None:
    """Self-fencing by the worker's own clock: its beats hang (another session holds its
    worker row, as a partition leaves a call waiting with no answer), and the handler is
    stopped within the lease, before anyone could have rescued the job; a beat that gets
    through again renews what is left."""
    job = enqueue(store, task_type="hold")
    lease = fast.lease_seconds

    async def test(worker: Worker) -> None:
        await worker._register()
        await worker.fetcher.fetch()
        (running,) = worker.slots.running()
        claimed_at = running.renewed_from
        until = asyncio.Event()
        with store.engine.connect() as holder, holder.begin():
            holder.execute(update(workers).where(workers.c.id == worker.worker_id)
                           .values(last_heartbeat_at=func.now()))
            loops = [asyncio.create_task(run_loop(name, body, until)) for name, body in
                     (("heartbeat", worker.heartbeat.beat), ("fence", worker.heartbeat.fence))]
            while not running.lost:
                assert time.monotonic() < claimed_at + lease, "still running past its lease"
                await asyncio.sleep(0.02)
            stopped_at = time.monotonic()
            await settled(worker)
        assert job.id in cancelled, "the handler was not stopped"
        assert stopped_at > claimed_at + lease - 1.0, "stopped long before it had to be"
        until.set()
        await asyncio.wait_for(asyncio.gather(*loops), 15)

    run(store, fast, test)
    # Nothing of the stopped handler was written; the job waits for rescue.
    assert store.get(job.id).state is JobState.RUNNING


def test_a_graceful_stop_releases_an_unfinished_job_without_charging_it(
    store: SqlStore, fast: Settings
) -> None:
    job = enqueue(store, task_type="hold")

    async def test(worker: Worker) -> None:
        serving = asyncio.create_task(worker.run())
        while not len(worker.slots):
            assert not serving.done()
            await asyncio.sleep(0.01)
        worker.stop()
        assert await asyncio.wait_for(serving, 10) == 0

    run(store, fast, test)
    released = store.get(job.id)
    assert released.state is JobState.PENDING and released.attempts == 0
    assert [a.outcome for a in released.attempt_log] == [AttemptOutcome.RELEASED]
    assert store.stats(live_worker_seconds=60).workers == [], "the worker did not deregister"


def test_a_second_stop_skips_the_rest_of_the_grace_period(
    store: SqlStore, fast: Settings
) -> None:
    job = enqueue(store, task_type="hold")
    patient = fast.model_copy(update={"shutdown_grace_seconds": 30.0})

    async def test(worker: Worker) -> None:
        serving = asyncio.create_task(worker.run())
        while not len(worker.slots):
            await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.sleep(0.2)
        assert not serving.done(), "the grace period was not waited for"
        worker.stop()
        assert await asyncio.wait_for(serving, 5) == 0

    run(store, patient, test)
    assert store.get(job.id).state is JobState.PENDING


def test_a_crashed_loop_stops_the_worker_with_exit_code_1(
    store: SqlStore, fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = enqueue(store, task_type="hold")
    rescue = store.rescue
    calls = []

    def crashing_rescue(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise StoreUnavailable("down for a moment")  # weathered
        if store.get(job.id, with_attempts=False).state is not JobState.RUNNING:
            return rescue(*args)
        raise RuntimeError("a bug in a loop")  # not weathered: once the job runs, crash

    monkeypatch.setattr(store, "rescue", crashing_rescue)

    async def test(worker: Worker) -> None:
        assert await asyncio.wait_for(worker.run(), 10) == 1

    run(store, fast, test)
    assert len(calls) >= 2
    released = store.get(job.id)  # stopping after a crash is a graceful stop all the same
    assert released.state is JobState.PENDING and released.attempts == 0
    assert store.stats(live_worker_seconds=60).workers == []


def test_a_loop_weathers_store_unavailable_and_ends_when_told() -> None:
    async def main() -> list[str]:
        until, seen = asyncio.Event(), []

        async def body() -> float:
            seen.append("try")
            if len(seen) < 3:
                raise StoreUnavailable("down")
            until.set()
            return 60.0  # an interruptible sleep: the set event ends it at once

        await asyncio.wait_for(run_loop("test", body, until), 5)
        return seen

    assert asyncio.run(main()) == ["try"] * 3


# -- handlers that steer their retries (issue 13) ---------------------------------------------


async def work_through(worker: Worker, store: SqlStore, job_id: int, rounds: int) -> None:
    """Claim, run and write ``rounds`` times (each round one attempt of due jobs)."""
    for _ in range(rounds):
        await worker.fetcher.fetch()
        await settled(worker)
        await worker.completer.flush()
        assert len(worker.outbox) == 0


def test_a_snoozing_handler_runs_again_uncharged_and_then_succeeds(
    store: SqlStore, fast: Settings
) -> None:
    job = enqueue(store, task_type="snooze", payload={"times": 3}, max_attempts=1)

    async def test(worker: Worker) -> None:
        await work_through(worker, store, job.id, 4)

    run(store, fast, test)
    assert snoozed[job.id] == [1, 1, 1], "a snooze was charged to the attempts"
    got = store.get(job.id)
    assert got.state is JobState.DONE and got.result == {"attempt": 1}
    assert got.attempts == 1 and got.max_attempts == 1
    log = got.attempt_log
    assert [a.outcome for a in log] == [AttemptOutcome.RELEASED] * 3 + [AttemptOutcome.DONE]
    assert all((a.error or "").startswith("snoozed") for a in log[:3])


def test_a_snooze_waits_its_seconds_before_the_job_is_claimable(
    store: SqlStore, fast: Settings
) -> None:
    job = enqueue(store, task_type="snooze", payload={"times": 1, "seconds": 60})

    async def test(worker: Worker) -> None:
        await work_through(worker, store, job.id, 2)  # the second round finds nothing due

    run(store, fast, test)
    got = store.get(job.id)
    assert got.state is JobState.PENDING and got.attempts == 0
    assert got.run_at > store.ping() + timedelta(seconds=50)


def test_snoozes_past_the_tasks_max_snoozes_fail_the_job(
    store: SqlStore, fast: Settings
) -> None:
    job = enqueue(store, task_type="snooze_twice_at_most", payload={"times": 10},
                  max_attempts=1)

    async def test(worker: Worker) -> None:
        await work_through(worker, store, job.id, 4)

    run(store, fast, test)
    got = store.get(job.id)
    assert got.state is JobState.FAILED and "max_snoozes" in (got.last_error or "")
    assert [a.outcome for a in got.attempt_log] == [
        AttemptOutcome.RELEASED, AttemptOutcome.RELEASED, AttemptOutcome.ERROR]
    assert len(snoozed[job.id]) == 3, "the job ran on after it failed"


def test_a_handler_that_raises_cancel_cancels_its_job_with_the_reason(
    store: SqlStore, fast: Settings
) -> None:
    job = enqueue(store, task_type="give_up", payload="order 7", max_attempts=5)

    async def test(worker: Worker) -> None:
        await work_through(worker, store, job.id, 2)

    run(store, fast, test)
    got = store.get(job.id)
    assert got.state is JobState.CANCELLED and got.attempts == 1
    assert got.last_error == "not wanted any more: order 7"
    assert [(a.outcome, a.error) for a in got.attempt_log] == [
        (AttemptOutcome.CANCELLED, "not wanted any more: order 7")]


def test_retry_on_retries_only_its_errors_with_the_tasks_backoff(
    store: SqlStore, fast: Settings
) -> None:
    retried = enqueue(store, task_type="picky", payload="timeout", max_attempts=5)
    failed = enqueue(store, task_type="picky", payload="value", max_attempts=5)

    async def test(worker: Worker) -> None:
        await work_through(worker, store, retried.id, 1)

    run(store, fast, test)
    got = store.get(retried.id)
    assert got.state is JobState.PENDING and got.attempts == 1
    # backoff=lambda a: 60 * a, not the worker's 0.1 s cap
    assert got.run_at > store.ping() + timedelta(seconds=50)
    other = store.get(failed.id)
    assert other.state is JobState.FAILED and other.attempts == 1, "not in retry_on: at once"
    assert other.last_error == "ValueError: value"
    assert [a.outcome for a in other.attempt_log] == [AttemptOutcome.ERROR]


def test_discard_on_fails_at_once_and_other_errors_retry(
    store: SqlStore, fast: Settings
) -> None:
    discarded = enqueue(store, task_type="discards", payload="permanent", max_attempts=5)
    retried = enqueue(store, task_type="discards", payload="value", max_attempts=2)

    async def test(worker: Worker) -> None:
        await work_through(worker, store, discarded.id, 2)

    run(store, fast, test)
    got = store.get(discarded.id)
    assert got.state is JobState.FAILED and got.attempts == 1
    assert got.last_error == "Permanent: permanent"
    (att,) = got.attempt_log
    assert att.outcome is AttemptOutcome.ERROR and "Permanent" in (att.traceback or "")
    # backoff 0: the second round ran the other one's second and last attempt
    other = store.get(retried.id)
    assert other.state is JobState.FAILED and other.attempts == 2


def test_the_fetcher_leaves_a_paused_queue_alone_until_it_is_resumed(
    store: SqlStore, fast: Settings
) -> None:
    """A paused queue's pending job is not claimed; its running job finishes; after the
    resume the next fetch claims the pending one."""
    running = enqueue(store, task_type="ok")

    async def test(worker: Worker) -> None:
        await worker.fetcher.fetch()
        store.pause_queue("default")
        waiting = enqueue(store, task_type="ok")
        await settled(worker)
        await worker.completer.flush()  # the running job of the paused queue finished
        assert store.get(running.id, with_attempts=False).state is JobState.DONE
        for _ in range(3):
            await worker.fetcher.fetch()
        assert len(worker.slots) == 0
        assert store.get(waiting.id, with_attempts=False).state is JobState.PENDING
        store.resume_queue("default")
        await worker.fetcher.fetch()
        await settled(worker)
        await worker.completer.flush()
        assert store.get(waiting.id, with_attempts=False).state is JobState.DONE

    run(store, fast, test)
