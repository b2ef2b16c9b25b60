"""ctx.progress: from async and def handlers, throttled, the last report written before the
outcome, fenced by the lease; on both backends, against a real store."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from jobq.registry import JobContext, TaskRegistry
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.types import JobState, NewJob
from jobq.worker import Worker
from jobq.worker import progress as progress_mod

release = threading.Event()


async def many_reports(payload: Any, ctx: JobContext) -> str:
    for i in range(1, 101):
        ctx.progress(i / 100, f"step {i}")
        await asyncio.sleep(0)
    return "ok"


def thread_reports(payload: Any, ctx: JobContext) -> str:
    ctx.progress(0.5, "half way")
    release.wait(10)
    ctx.progress(0.9)
    return "ok"


async def bad_fraction(payload: Any, ctx: JobContext) -> None:
    ctx.progress(payload)


def registry() -> TaskRegistry:
    reg = TaskRegistry()
    reg.register("many", many_reports)
    reg.register("thread", thread_reports)
    reg.register("bad", bad_fraction, max_attempts=1)
    return reg


@pytest.fixture
def fast(db_url: str) -> Settings:
    return load_settings(database_url=db_url, lease_seconds=5, heartbeat_interval_seconds=0.2,
                         poll_interval_seconds=0.05, backoff_base_seconds=0.05)


def run_until(store: SqlStore, settings: Settings, done: Any, during: Any = None) -> Worker:
    """Run a worker's fetcher and completer until ``done()``; ``during(worker)`` meanwhile."""
    async def main() -> Worker:
        worker = Worker(store, registry(), settings, concurrency=2)
        try:
            deadline = time.monotonic() + 15
            while not done():
                assert time.monotonic() < deadline, "the jobs did not finish"
                await worker.fetcher.fetch()
                if during is not None:
                    await during(worker)
                await worker.completer.flush()
                await asyncio.sleep(0.02)
        finally:
            worker.db.close()
        return worker

    return asyncio.run(main())


def _final(store: SqlStore, job_id: int) -> Any:
    return lambda: store.get(job_id, with_attempts=False).state.is_final


def test_reports_are_throttled_and_the_last_is_written_before_the_outcome(
        store: SqlStore, fast: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[float] = []
    real = store.set_progress

    def counted(lease: Any, fraction: float, message: str | None) -> bool:
        writes.append(fraction)
        return real(lease, fraction, message)

    monkeypatch.setattr(store, "set_progress", counted)
    job = store.enqueue(NewJob("many")).job
    run_until(store, fast, _final(store, job.id))
    got = store.get(job.id)
    assert got.state is JobState.DONE
    assert (got.progress, got.progress_message) == (1.0, "step 100")
    assert got.progress_at is not None
    # 100 reports within well under a second: the first one, then the last (flushed).
    assert 1 <= len(writes) <= 3 and writes[-1] == 1.0


def test_a_def_handler_reports_from_its_thread_and_it_shows_while_it_runs(
        store: SqlStore, fast: Settings) -> None:
    release.clear()
    job = store.enqueue(NewJob("thread")).job
    seen: list[Any] = []

    async def look(worker: Worker) -> None:
        got = await worker.db.call(store.get, job.id)
        if got.state is JobState.RUNNING and got.progress is not None and not seen:
            seen.append((got.progress, got.progress_message))
            release.set()

    run_until(store, fast, _final(store, job.id), look)
    assert seen == [(0.5, "half way")]
    got = store.get(job.id)
    assert got.state is JobState.DONE and (got.progress, got.progress_message) == (0.9, None)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "half", True])
def test_a_fraction_outside_0_to_1_is_a_value_error_in_the_handler(fraction: Any) -> None:
    ctx = JobContext(job_id=1, attempt=1, max_attempts=1, queue="q", task_type="t",
                     worker_id="w")
    with pytest.raises(ValueError, match="fraction"):
        ctx.progress(fraction)
    ctx.progress(0)  # no worker behind it: nowhere to go, and no error
    ctx.progress(1, "done")


def test_a_bad_fraction_fails_the_attempt(store: SqlStore, fast: Settings) -> None:
    job = store.enqueue(NewJob("bad", 2, max_attempts=1)).job
    run_until(store, fast, _final(store, job.id))
    got = store.get(job.id)
    assert got.state is JobState.FAILED and "ValueError: progress" in (got.last_error or "")
    assert got.progress is None


def test_a_report_without_the_lease_changes_nothing(store: SqlStore) -> None:
    job = store.enqueue(NewJob("many")).job
    (claimed,) = store.claim("w", ["default"], 1, 30)
    assert store.set_progress(claimed.lease, 0.25, "x" * 10_000)
    got = store.get(job.id)
    assert got.progress == 0.25 and len(got.progress_message or "") == 500
    store.cancel(job.id)
    assert not store.set_progress(claimed.lease, 0.75, "late")
    assert store.get(job.id).progress == 0.25


def test_the_throttle_is_a_second() -> None:
    assert progress_mod.MIN_INTERVAL == 1.0
