"""jobq.Client and jobq.AsyncClient against a real uvicorn server, on every backend.

The clients are meant to be the in-process client over HTTP: the same answers and the same
errors. So most checks here make one call both ways, through ``JobService`` and through the
client, and compare what comes back. Jobs are run by claiming and completing them through the
store, as a worker would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

import jobq
from jobq.api import create_app
from jobq.errors import (
    Forbidden,
    IdempotencyConflict,
    InvalidCursor,
    InvalidJob,
    InvalidTransition,
    JobNotFound,
    JobqError,
    QueueNotFound,
    StoreUnavailable,
    Unauthorized,
    UnknownTask,
)
from jobq.harness import free_port
from jobq.service import JobService
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.store.tables import api_keys
from jobq.types import JobState
from test_api import serve, unreachable  # noqa: F401 - a fixture


@pytest.fixture
def url(settings: Settings) -> Iterator[str]:
    with serve(create_app(settings=settings)) as http:
        yield str(http.base_url)


@pytest.fixture
def q(url: str) -> Iterator[jobq.Client]:
    with jobq.Client(url) as client:
        yield client


def run_one(store: SqlStore, result: Any = None, *, error: str | None = None) -> int:
    """Claim the next job and end it as a worker would: done with ``result``, or failed for
    good with ``error``."""
    (claimed,) = store.claim("w-test", ["default"], 1, 30)
    if error is None:
        assert store.complete(claimed.lease, result)
    else:
        store.fail(claimed.lease, error, "Traceback: ...", 0, final=True)
    return claimed.job.id


def same_error(in_process: Any, over_http: Any) -> JobqError:
    """Both calls raise the same jobq error, with the same fields; the client's is returned."""
    with pytest.raises(JobqError) as local:
        in_process()
    with pytest.raises(JobqError) as remote:
        over_http()
    a, b = local.value, remote.value
    assert type(b) is type(a), (a, b)
    for name in ("index", "field", "job_id", "state", "queue", "task_type", "key"):
        assert getattr(b, name, None) == getattr(a, name, None), (name, a, b)
    return b


# -- answers ----------------------------------------------------------------------------------


def test_enqueue_get_and_list_answer_what_the_service_answers(
    q: jobq.Client, service: JobService, store: SqlStore
) -> None:
    made = q.enqueue("echo", {"to": "ana"}, queue="default", priority=5, max_attempts=4,
                     idempotency_key="order-1")
    assert made.created and made.job.state is JobState.PENDING
    again = q.enqueue("echo", {"to": "ana"}, queue="default", priority=5, max_attempts=4,
                      idempotency_key="order-1")
    assert not again.created and again.job.id == made.job.id

    local = service.get(made.job.id)
    remote = q.get(made.job.id)
    for name in ("id", "task_type", "payload", "queue", "priority", "state", "attempts",
                 "max_attempts", "run_at", "idempotency_key", "created_at"):
        assert getattr(remote, name) == getattr(local, name), name

    run_one(store, {"sent": True})
    done = q.get(made.job.id)
    assert done.state is JobState.DONE and done.result == {"sent": True}
    assert done.finished_at is not None and done.worker_id == "w-test"

    batch = q.enqueue_many([{"task_type": "echo", "payload": i, "delay_seconds": 60}
                            for i in range(5)])
    assert [r.created for r in batch] == [True] * 5
    ids = [r.job.id for r in batch]
    page = q.list_jobs(state="pending", limit=3)
    assert [j.id for j in page.items] == sorted(ids, reverse=True)[:3]
    rest = q.list_jobs(state=JobState.PENDING, limit=3, cursor=page.next_cursor)
    assert [j.id for j in rest.items] == sorted(ids, reverse=True)[3:]
    assert rest.next_cursor is None


def test_attempts_cancel_and_retry(q: jobq.Client, store: SqlStore) -> None:
    job = q.enqueue("echo", "x", max_attempts=1).job
    run_one(store, error="ValueError: boom")
    failed = q.get(job.id)
    assert failed.state is JobState.FAILED and failed.last_error == "ValueError: boom"
    (attempt,) = failed.attempt_log
    assert attempt.error == "ValueError: boom" and attempt.worker_id == "w-test"
    assert attempt.outcome.value == "error" and attempt.finished_at is not None

    assert q.retry(job.id).state is JobState.PENDING
    assert q.cancel(job.id).state is JobState.CANCELLED
    assert store.get(job.id).state is JobState.CANCELLED


def test_wait_returns_once_the_job_is_final(q: jobq.Client, store: SqlStore) -> None:
    job = q.enqueue("echo", "x").job
    # Not final within the timeout: the job as it is.
    started = time.monotonic()
    assert q.wait(job.id, timeout=0.3).state is JobState.PENDING
    assert 0.3 <= time.monotonic() - started < 3
    timer = threading.Timer(0.5, run_one, (store, "ok"))
    timer.start()
    try:
        done = q.wait(job.id, timeout=20)
    finally:
        timer.join()
    assert done.state is JobState.DONE and done.result == "ok"


# -- the same errors as in process ------------------------------------------------------------


def test_errors_are_the_in_process_clients(
    q: jobq.Client, service: JobService, store: SqlStore
) -> None:
    e = same_error(lambda: service.get(987654), lambda: q.get(987654))
    assert isinstance(e, JobNotFound) and e.job_id == 987654

    e = same_error(lambda: service.enqueue("no-such-task"), lambda: q.enqueue("no-such-task"))
    assert isinstance(e, UnknownTask) and "echo" in e.known

    e = same_error(lambda: service.enqueue("echo", priority=5000),
                   lambda: q.enqueue("echo", priority=5000))
    assert isinstance(e, InvalidJob) and e.field == "priority"

    e = same_error(lambda: service.enqueue("echo", unique_for=5),
                   lambda: q.enqueue("echo", unique_for=5))
    assert isinstance(e, InvalidJob) and e.field == "unique_for"

    e = same_error(lambda: service.enqueue("echo", timeout_seconds=0),
                   lambda: q.enqueue("echo", timeout_seconds=0))
    assert isinstance(e, InvalidJob) and e.field == "timeout_seconds"

    bad_batch = [{"task_type": "echo"}, {"task_type": "echo", "queue": "no spaces"}]
    e = same_error(lambda: service.enqueue_many(bad_batch), lambda: q.enqueue_many(bad_batch))
    assert isinstance(e, InvalidJob) and e.index == 1 and e.field == "queue"
    unknown_batch = [{"task_type": "echo"}, {"task_type": "echo"}, {"task_type": "nope"}]
    e = same_error(lambda: service.enqueue_many(unknown_batch),
                   lambda: q.enqueue_many(unknown_batch))
    assert isinstance(e, UnknownTask) and e.index == 2
    assert store.list_jobs(limit=10).items == []  # nothing of either batch was stored

    held = service.enqueue("echo", 1, idempotency_key="k1").job
    e = same_error(lambda: service.enqueue("echo", 2, idempotency_key="k1"),
                   lambda: q.enqueue("echo", 2, idempotency_key="k1"))
    assert isinstance(e, IdempotencyConflict) and e.job_id == held.id and e.key == "k1"

    run_one(store, "done")
    e = same_error(lambda: service.cancel(held.id), lambda: q.cancel(held.id))
    assert isinstance(e, InvalidTransition) and e.state == "done" and e.action == "cancel"
    assert str(e) == f"cannot cancel job {held.id}: it is done"

    e = same_error(lambda: service.list_jobs(cursor="not-a-cursor"),
                   lambda: q.list_jobs(cursor="not-a-cursor"))
    assert isinstance(e, InvalidCursor)

    with pytest.raises(TypeError, match="colour"):
        q.enqueue("echo", colour="red")


def test_api_keys(settings: Settings, service: JobService, store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(api_keys))
    try:
        _, reader = service.create_key("reader", ["*"], ["read"])
        _, emails = service.create_key("emails", ["emails"], ["enqueue", "read", "admin"])
        with serve(create_app(settings=settings)) as http:
            _keyed(str(http.base_url), reader, emails)
    finally:
        with store.engine.begin() as conn:
            conn.execute(delete(api_keys))


def _keyed(url: str, reader: str, emails: str) -> None:
    """The four ways a key can be refused, and a queue-bound key's own queue."""
    with jobq.Client(url) as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.enqueue("echo")
    with jobq.Client(url, token=reader[:-2] + "xx") as wrong:
        with pytest.raises(Unauthorized) as info:
            wrong.get(1)
        assert info.value.invalid_token
    with jobq.Client(url, token=reader) as q:
        with pytest.raises(Forbidden) as forbidden:
            q.enqueue("echo")
        assert forbidden.value.required_scope == "enqueue"
    with jobq.Client(url, token=emails) as q:
        with pytest.raises(QueueNotFound) as info2:
            q.enqueue("echo", queue="default")
        assert info2.value.queue == "default"
        made = q.enqueue("echo", "hi", queue="emails")
        assert made.created and q.get(made.job.id).queue == "emails"


def test_an_api_that_cannot_be_reached_is_store_unavailable() -> None:
    with jobq.Client(f"http://127.0.0.1:{free_port()}", timeout=5) as q:
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            q.enqueue("echo")


def test_an_api_without_its_database_is_store_unavailable(
    unreachable: JobService,  # noqa: F811 - the fixture imported above
) -> None:
    with serve(create_app(service=unreachable)) as http, jobq.Client(str(http.base_url)) as q:
        with pytest.raises(StoreUnavailable, match="answered 503"):
            q.get(1)
        with pytest.raises(StoreUnavailable):
            q.enqueue("echo")


# -- async ------------------------------------------------------------------------------------


def test_async_client(url: str, store: SqlStore) -> None:
    async def main() -> None:
        async with jobq.AsyncClient(url) as q:
            made = await q.enqueue("echo", {"n": 1})
            assert made.created
            batch = await q.enqueue_many([{"task_type": "echo", "payload": i}
                                          for i in range(3)])
            assert len(batch) == 3
            waiting = asyncio.create_task(q.wait(made.job.id, timeout=20))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(run_one, store, "async-ok")
            done = await waiting
            assert done.state is JobState.DONE and done.result == "async-ok"
            with pytest.raises(JobNotFound):
                await q.get(123456)
            page = await q.list_jobs(limit=10)
            assert len(page.items) == 4
            assert (await q.cancel(batch[0].job.id)).state is JobState.CANCELLED

    asyncio.run(main())


def test_wait_is_one_long_poll_not_a_poll_loop(url: str, store: SqlStore) -> None:
    gets: list[str] = []
    http = httpx.Client(base_url=url, timeout=30,
                        event_hooks={"request": [lambda r: gets.append(str(r.url))]})
    with jobq.Client(url, http=http) as q:
        job = q.enqueue("echo", "x").job
        gets.clear()
        timer = threading.Timer(1.0, run_one, (store, "ok"))
        timer.start()
        try:
            done = q.wait(job.id, timeout=20)
        finally:
            timer.join()
        assert done.state is JobState.DONE
        assert len(gets) == 1 and "wait=20.000" in gets[0], gets
        started = time.monotonic()
        pending = q.enqueue("echo", "y", delay_seconds=3600).job
        assert q.wait(pending.id, timeout=0.5).state is JobState.PENDING
        assert 0.45 <= time.monotonic() - started < 3
    http.close()


def test_tags_meta_and_progress_over_http(q: jobq.Client, store: SqlStore) -> None:
    made = q.enqueue("echo", 1, tags=["red"], meta={"by": "ana"}).job
    (other,) = q.enqueue_many([{"task_type": "echo", "tags": ["blue"]}])
    assert (made.tags, made.meta) == (("red",), {"by": "ana"})
    assert [j.id for j in q.list_jobs(tag="red").items] == [made.id]
    assert [j.id for j in q.list_jobs(tag="blue").items] == [other.job.id]
    (claimed,) = store.claim("w", ["default"], 1, 30)
    store.set_progress(claimed.lease, 0.25, "a quarter")
    got = q.get(claimed.job.id)
    assert (got.progress, got.progress_message) == (0.25, "a quarter")
    assert got.progress_at is not None
    with pytest.raises(InvalidJob) as err:
        q.enqueue("echo", tags=["not a name"])
    assert err.value.field.startswith("tags")  # "tags.0": the item
