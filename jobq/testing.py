"""Test helpers for applications that use jobq: a throw-away queue, and ``drain()`` to run
what was enqueued, in the test's own process, with jobq's real semantics.

    import jobq.testing

    def test_signup_sends_a_welcome_email():
        with jobq.testing.queue(tasks=["myapp.tasks"]) as q:
            signup(q, "ana@example.com")            # the code under test enqueues
            drained = q.drain()
            assert [j.result for j in drained.done] == [{"sent": True}]

or, with pytest, the ``jobq_queue`` fixture (registered when jobq is installed; its tasks
come from ``JOBQ_TASKS``).

The queue is a ``JobService`` on a new SQLite file of its own (``q.database_url``, for code
that calls ``jobq.connect()``), deleted afterwards. ``drain`` runs jobq's own worker, in a
thread, until nothing is running and nothing is due: every handler runs as it would in
production (payload models, retries and their policies, Snooze, Cancel, timeouts, results
stored as JSON), only without waiting for backoff (its base and cap are 0 here unless given)
and one job at a time (``concurrency=1``), so a test sees a deterministic order. Jobs
scheduled for later, and snoozed ones, stay pending: ``drained.pending`` lists them.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobq.types import Job, JobState

try:  # the fixture needs pytest; the rest does not
    import pytest
except ImportError:  # pragma: no cover - jobq's own tests have it
    pytest = None  # type: ignore[assignment]

#: Settings of a test queue, unless given: no backoff wait, one job at a time, quick polls,
#: no periodic jobs (a test enqueues what it wants to run).
TEST_DEFAULTS: dict[str, Any] = {
    "backoff_base_seconds": 0.0,
    "backoff_cap_seconds": 0.0,
    "concurrency": 1,
    "poll_interval_seconds": 0.02,
    "scheduler_enabled": False,
    "shutdown_grace_seconds": 5.0,
}


@dataclass
class Drained:
    """The jobs that were waiting when ``drain`` began (or were enqueued while it ran), as
    they are after it, by state; each list oldest first."""

    done: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    cancelled: list[Job] = field(default_factory=list)
    pending: list[Job] = field(default_factory=list)  # due later: scheduled or snoozed

    @property
    def jobs(self) -> list[Job]:
        return sorted([*self.done, *self.failed, *self.cancelled, *self.pending],
                      key=lambda j: j.id)


def _service_class() -> type:
    from jobq.service import JobService

    class TestQueue(JobService):
        """A JobService with ``drain``; see the module's docstring."""

        database_url: str

        def drain(self, *, queues: Sequence[str] | None = None,
                  timeout: float = 60.0) -> Drained:
            """Run jobs until none is running or due in ``queues`` (default: every queue
            that has a job and is not paused). Raises TimeoutError after ``timeout``
            seconds (a handler that never ends, a job that retries for ever)."""
            return _drain(self, queues, timeout)

    return TestQueue


@contextmanager
def queue(tasks: Sequence[str] | None = None, **settings: Any) -> Iterator[Any]:
    """A throw-away queue (a ``JobService`` with ``drain``) on a new SQLite file. ``tasks``:
    the task modules (default: ``JOBQ_TASKS``); ``settings``: any jobq setting
    (``jobq.settings.Settings``), over ``TEST_DEFAULTS``."""
    from jobq.settings import load_settings

    folder = Path(tempfile.mkdtemp(prefix="jobq-test-"))
    url = f"sqlite:///{folder / 'jobq.db'}"
    overrides = {**TEST_DEFAULTS, **settings, "database_url": url}
    if tasks is not None:
        overrides["tasks"] = list(tasks)
    q = _service_class().from_settings(load_settings(**overrides))
    q.database_url = url
    try:
        yield q
    finally:
        q.close()
        shutil.rmtree(folder, ignore_errors=True)


def _jobq_queue() -> Iterator[Any]:
    """A throw-away jobq queue with ``drain()``, its tasks from ``JOBQ_TASKS``."""
    with queue() as q:
        yield q


if pytest is not None:
    jobq_queue = pytest.fixture(_jobq_queue, name="jobq_queue")


# -- drain ------------------------------------------------------------------------------------


def _drain(q: Any, queues: Sequence[str] | None, timeout: float) -> Drained:
    from jobq.worker.worker import Worker

    if queues is None:
        queues = [i.name for i in q.list_queues() if not i.paused and
                  (i.jobs.get("pending", 0) or i.jobs.get("running", 0))]
    waiting = _unfinished(q)
    newest = q.list_jobs(limit=1).items
    floor = newest[0].id if newest else 0
    if queues:
        worker = Worker(q.store, q.registry, q.settings, worker_id="jobq-testing",
                        queues=list(queues))
        failure: list[BaseException] = []
        thread = threading.Thread(target=_serve, args=(worker, q, list(queues), timeout,
                                                       failure), daemon=True)
        thread.start()
        thread.join(timeout + 30)
        if failure:
            raise failure[0]
    ids = sorted(waiting | _newer_than(q, floor))
    drained = Drained()
    for job_id in ids:
        job = q.get(job_id)
        bucket = {JobState.DONE: drained.done, JobState.FAILED: drained.failed,
                  JobState.CANCELLED: drained.cancelled}.get(job.state, drained.pending)
        bucket.append(job)
    return drained


def _serve(worker: Any, q: Any, queues: list[str], timeout: float,
           failure: list[BaseException]) -> None:
    async def watch() -> None:
        deadline = time.monotonic() + timeout
        while not _idle(worker, q, queues):
            if time.monotonic() > deadline:
                failure.append(TimeoutError(
                    f"jobq.testing: jobs still running or due after {timeout:g} s"))
                break
            await asyncio.sleep(0.02)
        worker.stop()

    async def main() -> None:
        watcher = asyncio.create_task(watch())
        code = await worker.run()
        await watcher
        if code != 0 and not failure:
            failure.append(RuntimeError(f"jobq.testing: the worker stopped with code {code} "
                                        "(see the log)"))

    try:
        asyncio.run(main())
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        failure.append(exc)


def _idle(worker: Any, q: Any, queues: list[str]) -> bool:
    """Nothing runs in the worker, nothing is left to write, and the database has no job of
    ``queues`` running or due."""
    if len(worker.slots) or len(worker.outbox):
        return False
    stats = q.stats(allowed_queues=queues)
    return (stats.oldest_pending_age_seconds is None
            and all(stats.queues.get(name, {}).get("running", 0) == 0 for name in queues))


def _unfinished(q: Any) -> set[int]:
    ids: set[int] = set()
    for state in (JobState.PENDING, JobState.RUNNING):
        cursor = None
        while True:
            page = q.list_jobs(state=state, limit=500, cursor=cursor)
            ids.update(j.id for j in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
    return ids


def _newer_than(q: Any, floor: int) -> set[int]:
    """The jobs enqueued during the drain (by handlers): ids above the newest before it."""
    found: set[int] = set()
    cursor = None
    while True:
        page = q.list_jobs(limit=500, cursor=cursor)  # newest first
        newer = [j.id for j in page.items if j.id > floor]
        found.update(newer)
        cursor = page.next_cursor
        if cursor is None or len(newer) < len(page.items):
            return found
