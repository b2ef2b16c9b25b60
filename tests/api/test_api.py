"""The HTTP API, through a real uvicorn server and a real HTTP client, on every backend.

Nothing is mocked: each test starts the app on a free port of 127.0.0.1, talks to it with
httpx, and checks what the database holds with the ``store`` fixture.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from jobq.api import create_app
from jobq.registry import load_registry
from jobq.schedules import make_schedule
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.store import make_engine

REPO = Path(__file__).resolve().parents[2]
PROBLEM = "application/problem+json"
BUILTIN_TASKS = {"test", "echo", "sleep", "fail", "noop"}
JOB_KEYS = {
    "id", "task_type", "payload", "queue", "priority", "state", "attempts", "max_attempts",
    "run_at", "idempotency_key", "worker_id", "lease_expires_at", "result", "last_error",
    "created_at", "started_at", "finished_at", "unique_key", "unique_for", "concurrency_key",
    "concurrency_limit",
    "tags", "meta", "progress", "progress_message", "progress_at", "timeout_seconds",
    "parents_left", "on_parent_failure", "callback_url",
}
STATES = {"pending", "running", "done", "failed", "cancelled", "waiting"}


# -- a real server ----------------------------------------------------------------------------


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    """Run ``app`` under uvicorn on a free port in a thread; yield a client for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5,
                       http="jobq.api.protocol:HttpProtocol")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("the API server did not start (see its log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the API server did not start within 30 s")
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "the API server did not stop"


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings=settings)) as c:
        yield c


# -- helpers ----------------------------------------------------------------------------------


def problem(resp: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    """Assert ``resp`` is an RFC 9457 problem with ``status``; return its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM, resp.headers
    body = resp.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["type"], str) and body["type"]
    if type_ is not None:
        assert body["type"] == type_, body
    return body


def submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    resp = client.post("/jobs", json=body)
    assert resp.status_code == 201, resp.text
    job: dict[str, Any] = resp.json()
    return job


def stored_ids(store: SqlStore) -> list[int]:
    return [job.id for job in store.list_jobs(limit=500).items]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def nested(depth: int) -> Any:
    """``depth`` levels of arrays and objects around a number."""
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# -- submitting -------------------------------------------------------------------------------


def test_post_json_body_creates_job(client: httpx.Client, store: SqlStore) -> None:
    resp = client.post(
        "/jobs",
        json={
            "task_type": "echo",
            "payload": {"to": "ana", "n": [1, 2.5, None, True]},
            "queue": "emails",
            "priority": 7,
            "max_attempts": 4,
            "idempotency_key": "k-1",
        },
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["content-type"] == "application/json"
    job = resp.json()
    assert set(job) == JOB_KEYS  # lease_token is never exposed
    assert job["task_type"] == "echo"
    assert job["payload"] == {"to": "ana", "n": [1, 2.5, None, True]}
    assert job["queue"] == "emails"
    assert job["priority"] == 7
    assert job["max_attempts"] == 4
    assert job["idempotency_key"] == "k-1"
    assert job["state"] == "pending"
    assert job["attempts"] == 0
    assert job["worker_id"] is None and job["result"] is None and job["finished_at"] is None
    assert parse_time(job["run_at"]).tzinfo is not None
    stored = store.get(job["id"])
    assert stored.payload == job["payload"] and stored.queue == "emails"
    assert stored.priority == 7 and stored.max_attempts == 4


def test_post_query_form_as_in_the_brief(
    client: httpx.Client, store: SqlStore, settings: Settings
) -> None:
    resp = client.post("/jobs?task_type=test&payload=hello")
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert set(job) == JOB_KEYS
    assert (job["task_type"], job["payload"], job["queue"]) == ("test", "hello", "default")
    assert job["state"] == "pending" and job["priority"] == 0
    assert job["max_attempts"] == settings.max_attempts
    assert store.get(job["id"]).payload == "hello"

    resp = client.post(
        "/jobs",
        params={"task_type": "noop", "queue": "q2", "priority": "-5", "delay_seconds": "60"},
    )
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert (job["task_type"], job["payload"], job["queue"], job["priority"]) == (
        "noop", None, "q2", -5,
    )
    delay = parse_time(job["run_at"]) - parse_time(job["created_at"])
    assert timedelta(seconds=55) <= delay <= timedelta(seconds=65)
    assert len(stored_ids(store)) == 2


def test_max_attempts_defaults_to_settings(
    client: httpx.Client, settings: Settings
) -> None:
    assert submit(client, task_type="echo")["max_attempts"] == settings.max_attempts
    assert submit(client, task_type="echo", max_attempts=9)["max_attempts"] == 9


def test_idempotency_key_201_then_200_then_409(client: httpx.Client, store: SqlStore) -> None:
    body = {"task_type": "echo", "payload": {"a": 1}, "idempotency_key": "order-42"}
    first = client.post("/jobs", json=body)
    assert first.status_code == 201, first.text
    again = client.post("/jobs", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["payload"] == {"a": 1}

    other = client.post("/jobs", json={**body, "payload": {"a": 2}})
    p = problem(other, 409, "urn:jobq:problem:idempotency-conflict")
    assert p["job_id"] == first.json()["id"]
    assert "order-42" in p["detail"]
    assert stored_ids(store) == [first.json()["id"]]


def test_unique_key_201_then_200_until_the_job_finished(
        client: httpx.Client, store: SqlStore) -> None:
    first = client.post("/jobs", json={"task_type": "echo", "payload": 1, "unique_key": "u-1"})
    assert first.status_code == 201, first.text
    assert first.json()["unique_key"] == "u-1" and first.json()["unique_for"] is None
    # Another request with the key: the live job, 200, whatever the request.
    again = client.post("/jobs?task_type=echo&payload=other&unique_key=u-1")
    assert again.status_code == 200, again.text
    assert (again.json()["id"], again.json()["payload"]) == (first.json()["id"], 1)
    batch = client.post("/jobs/batch", json={"jobs": [
        {"task_type": "echo", "payload": 2, "unique_key": "u-1"},
        {"task_type": "echo", "payload": 3, "unique_key": "u-2", "unique_for": 60},
    ]})
    assert batch.status_code == 201, batch.text
    items = batch.json()["jobs"]
    assert [j["created"] for j in items] == [False, True]
    assert items[0]["id"] == first.json()["id"] and items[1]["unique_for"] == 60
    claimed = store.claim("w", ["default"], 10, 30)
    for c in claimed:
        assert store.complete(c.lease, None)
    # Finished: u-1 is free again; u-2 is held for 60 s after its finish.
    fresh = client.post("/jobs", json={"task_type": "echo", "unique_key": "u-1"})
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
    held = client.post("/jobs", json={"task_type": "echo", "unique_key": "u-2"})
    assert held.status_code == 200 and held.json()["id"] == items[1]["id"]
    assert held.json()["state"] == "done"


def test_unique_for_without_unique_key_is_a_422(client: httpx.Client) -> None:
    r = client.post("/jobs", json={"task_type": "echo", "unique_for": 5})
    assert r.status_code == 422, r.text
    assert "unique_for" in r.text
    r = client.post("/jobs", json={"task_type": "echo", "unique_key": "k", "unique_for": "5"})
    assert r.status_code == 422, r.text


def test_a_job_timeout_is_stored_and_a_bad_one_is_a_422_that_stores_nothing(
        client: httpx.Client, store: SqlStore) -> None:
    r = client.post("/jobs", json={"task_type": "echo", "timeout_seconds": 2.5})
    assert r.status_code == 201, r.text
    assert r.json()["timeout_seconds"] == 2.5
    assert store.get(r.json()["id"]).timeout_seconds == 2.5
    assert client.post("/jobs", json={"task_type": "echo"}).json()["timeout_seconds"] is None
    for bad in (0, -1, "5", True, 1e9):
        r = client.post("/jobs", json={"task_type": "echo", "timeout_seconds": bad})
        assert r.status_code == 422, (bad, r.text)
        assert "timeout_seconds" in r.text
    r = client.post("/jobs/batch", json={"jobs": [
        {"task_type": "echo", "timeout_seconds": 1}, {"task_type": "echo", "timeout_seconds": 0}]})
    assert r.status_code == 422, r.text
    assert len(store.list_jobs(limit=10).items) == 2  # the two good single posts only


def test_concurrent_requests_with_one_unique_key_create_one_job(
        client: httpx.Client, store: SqlStore) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: client.post("/jobs", json={
            "task_type": "echo", "payload": i, "unique_key": "race"}), range(8)))
    assert sorted(r.status_code for r in answers) == [200] * 7 + [201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len(stored_ids(store)) == 1


def test_pause_and_resume_a_queue_and_list_the_queues(
        client: httpx.Client, store: SqlStore) -> None:
    job = client.post("/jobs", json={"task_type": "echo", "queue": "mail"}).json()
    client.post("/jobs", json={"task_type": "echo"})
    paused = client.post("/queues/mail/pause")
    assert paused.status_code == 200, paused.text
    body = paused.json()
    assert body["name"] == "mail" and body["paused"] is True and body["paused_at"]
    assert body["jobs"] == {"pending": 1, "running": 0, "done": 0, "failed": 0, "cancelled": 0, "waiting": 0}
    assert store.claim("w", ["mail"], 10, 30) == []
    listed = client.get("/queues")
    assert listed.status_code == 200, listed.text
    assert [(q["name"], q["paused"]) for q in listed.json()["queues"]] == [
        ("default", False), ("mail", True)]
    resumed = client.post("/queues/mail/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert [c.job.id for c in store.claim("w", ["mail"], 10, 30)] == [job["id"]]
    assert client.post("/queues/bad%20name/pause").status_code == 422
    assert client.get("/queues?x=1").status_code == 422


def test_idempotency_key_same_job_across_both_forms(client: httpx.Client) -> None:
    first = client.post(
        "/jobs", json={"task_type": "test", "payload": "hello", "idempotency_key": "k"}
    )
    assert first.status_code == 201, first.text
    again = client.post("/jobs?task_type=test&payload=hello&idempotency_key=k")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    conflict = client.post("/jobs?task_type=test&payload=bye&idempotency_key=k")
    problem(conflict, 409, "urn:jobq:problem:idempotency-conflict")


def test_concurrent_identical_requests_create_one_job(
    client: httpx.Client, store: SqlStore
) -> None:
    body = {"task_type": "echo", "payload": [1], "idempotency_key": "race"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/jobs", json=body), range(8)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 7 + [201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len(stored_ids(store)) == 1


def test_concurrent_submissions_each_get_their_own_committed_job(
    client: httpx.Client, store: SqlStore
) -> None:
    """32 clients at once (the API writes concurrent submissions together: group commit),
    one of them with a conflicting idempotency key."""
    taken = submit(client, task_type="echo", payload="first", idempotency_key="taken")
    barrier = threading.Barrier(32)

    def post(i: int) -> httpx.Response:
        body: dict[str, Any] = {"task_type": "echo", "payload": {"i": i}}
        if i == 13:
            body.update(payload="other", idempotency_key="taken")
        barrier.wait(timeout=10)
        return client.post("/jobs", json=body)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(post, range(32)))
    conflict = problem(answers[13], 409, "urn:jobq:problem:idempotency-conflict")
    assert conflict["job_id"] == taken["id"] and "index" not in conflict
    made = [r for i, r in enumerate(answers) if i != 13]
    assert [r.status_code for r in made] == [201] * 31, [r.text for r in made]
    ids = [r.json()["id"] for r in made]
    assert len(set(ids)) == 31
    for i, resp in enumerate(answers):
        if i != 13:  # committed, and the job of this very request
            assert store.get(resp.json()["id"]).payload == {"i": i} == resp.json()["payload"]
    assert sorted(stored_ids(store)) == sorted([taken["id"], *ids])


# -- POST /jobs/batch -------------------------------------------------------------------------


def test_batch_creates_jobs_in_order(client: httpx.Client, store: SqlStore) -> None:
    jobs = [
        {"task_type": "echo", "payload": {"n": 0}},
        {"task_type": "noop", "queue": "q2", "priority": 7, "delay_seconds": 60},
        {"task_type": "echo", "payload": [1, 2], "idempotency_key": "b-1", "max_attempts": 5},
        {"task_type": "echo", "payload": [1, 2], "idempotency_key": "b-1", "max_attempts": 5},
        {"task_type": "test", "payload": "hello", "run_at": "2030-01-02T03:04:05Z"},
    ]
    resp = client.post("/jobs/batch", json={"jobs": jobs})
    assert resp.status_code == 201, resp.text
    out = resp.json()["jobs"]
    assert [set(j) for j in out] == [JOB_KEYS | {"created"}] * 5
    assert [j["created"] for j in out] == [True, True, True, False, True]
    assert out[2]["id"] == out[3]["id"]
    assert [j["task_type"] for j in out] == [j["task_type"] for j in jobs]
    assert out[1]["queue"] == "q2" and out[1]["priority"] == 7
    assert out[2]["max_attempts"] == 5 and out[0]["max_attempts"] == 3
    assert parse_time(out[4]["run_at"]) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    for j in out:
        assert store.get(j["id"]).payload == j["payload"]
    assert len(stored_ids(store)) == 4
    # The keyed job again: nothing is created, so 200.
    again = client.post("/jobs/batch", json={"jobs": [jobs[2]]})
    assert again.status_code == 200, again.text
    assert [(j["id"], j["created"]) for j in again.json()["jobs"]] == [(out[2]["id"], False)]
    assert len(stored_ids(store)) == 4


def test_batch_invalid_item_is_422_naming_it_and_stores_nothing(
    client: httpx.Client, store: SqlStore
) -> None:
    good = {"task_type": "echo", "payload": 1}
    cases = [
        ({"task_type": "bad name"}, ["body", "jobs", 3, "task_type"]),
        ({"task_type": "echo", "priority": "high"}, ["body", "jobs", 3, "priority"]),
        ({"task_type": "echo", "payload": {"k": "a\x00"}}, ["body", "jobs", 3, "payload"]),
        ({"task_type": "echo", "extra": 1}, ["body", "jobs", 3, "extra"]),
        ({"task_type": "nope"}, ["body", "jobs", 3, "task_type"]),  # no such task
    ]
    for bad, loc in cases:
        resp = client.post("/jobs/batch", json={"jobs": [good, good, good, bad, good]})
        p = problem(resp, 422, "urn:jobq:problem:validation-error")
        assert [e["loc"] for e in p["errors"]] == [loc], p
        assert "jobs.3." in p["detail"]
    unknown = problem(client.post("/jobs/batch", json={"jobs": [good, {"task_type": "nope"}]}),
                      422)
    assert unknown["errors"][0]["type"] == "unknown_task" and "echo" in unknown["detail"]
    for body in ({"jobs": []}, {}, {"jobs": good}, {"jobs": [good], "more": 1}):
        problem(client.post("/jobs/batch", json=body), 422, "urn:jobq:problem:validation-error")
    assert stored_ids(store) == []


def test_batch_conflict_is_409_and_stores_nothing(client: httpx.Client, store: SqlStore) -> None:
    old = submit(client, task_type="echo", payload=1, idempotency_key="old")
    against_old = [{"task_type": "echo", "payload": 2},
                   {"task_type": "echo", "payload": 2, "idempotency_key": "old"}]
    p = problem(client.post("/jobs/batch", json={"jobs": against_old}), 409,
                "urn:jobq:problem:idempotency-conflict")
    assert (p["index"], p["job_id"]) == (1, old["id"])
    within = [{"task_type": "echo", "payload": 1, "idempotency_key": "new"},
              {"task_type": "echo"},
              {"task_type": "echo", "payload": 2, "idempotency_key": "new"}]
    p = problem(client.post("/jobs/batch", json={"jobs": within}), 409,
                "urn:jobq:problem:idempotency-conflict")
    assert p["index"] == 2 and "job_id" not in p and "items 0 and 2" in p["detail"]
    assert stored_ids(store) == [old["id"]]


def test_batch_size_limits(settings: Settings, store: SqlStore) -> None:
    small = load_settings(**{**settings.model_dump(), "batch_max_jobs": 3})
    with serve(create_app(settings=small)) as client:
        job = {"task_type": "noop"}
        assert client.post("/jobs/batch", json={"jobs": [job] * 3}).status_code == 201
        p = problem(client.post("/jobs/batch", json={"jobs": [job] * 4}), 422,
                    "urn:jobq:problem:validation-error")
        assert p["errors"][0]["loc"] == ["body", "jobs"] and "at most 3" in p["detail"]
        assert len(stored_ids(store)) == 3
    with serve(create_app(settings=settings)) as client:
        assert settings.batch_max_jobs == 1000
        many = {"jobs": [{"task_type": "noop", "payload": n} for n in range(1000)]}
        resp = client.post("/jobs/batch", json=many)
        assert resp.status_code == 201, resp.text
        assert [j["payload"] for j in resp.json()["jobs"]] == list(range(1000))
        problem(client.post("/jobs/batch", json={"jobs": [job] * 1001}), 422)
        huge = {"jobs": [{"task_type": "noop", "payload": "x" * 2000}] * 600}
        problem(client.post("/jobs/batch", json=huge), 413)
    assert store.stats(60).jobs["pending"] == 3 + 1000


def test_unknown_task_lists_the_known_ones(client: httpx.Client, store: SqlStore) -> None:
    for resp in (
        client.post("/jobs", json={"task_type": "nope", "payload": 1}),
        client.post("/jobs?task_type=nope&payload=x"),
    ):
        p = problem(resp, 422, "urn:jobq:problem:unknown-task")
        assert BUILTIN_TASKS <= set(p["known_task_types"])
        assert p["known_task_types"] == sorted(p["known_task_types"])
        assert "'nope'" in p["detail"]
        for name in BUILTIN_TASKS:
            assert name in p["detail"]
    assert stored_ids(store) == []


def test_task_type_in_body_and_query_or_neither_is_422(
    client: httpx.Client, store: SqlStore
) -> None:
    both = client.post("/jobs?task_type=echo", json={"task_type": "echo"})
    p = problem(both, 422, "urn:jobq:problem:validation-error")
    assert p["errors"][0]["loc"] == ["query", "task_type"]
    assert "not both" in p["detail"]

    body_and_query_option = client.post("/jobs?priority=3", json={"task_type": "echo"})
    assert problem(body_and_query_option, 422)["errors"][0]["loc"] == ["query", "priority"]

    for neither in (
        client.post("/jobs"),
        client.post("/jobs?payload=hello"),
        client.post("/jobs", content=b"null", headers={"content-type": "application/json"}),
    ):
        p = problem(neither, 422, "urn:jobq:problem:validation-error")
        assert p["errors"][0]["loc"] == ["body", "task_type"]
        assert "task_type" in p["detail"]
    assert stored_ids(store) == []


def _raw(payload_json: str) -> bytes:
    return ('{"task_type": "echo", "payload": ' + payload_json + "}").encode()


# (name, request kwargs, expected status, a location part that the problem must name)
INVALID: list[tuple[str, dict[str, Any], int, str]] = [
    ("NaN payload", {"content": _raw("NaN")}, 422, "payload"),
    ("Infinity nested", {"content": _raw('{"x": [1, Infinity]}')}, 422, "payload"),
    ("-Infinity", {"content": _raw("-Infinity")}, 422, "payload"),
    ("float overflow", {"content": _raw("1e400")}, 422, "payload"),
    ("NUL in string", {"content": _raw(r'{"a": ["x\u0000y"]}')}, 422, "payload"),
    ("NUL in key", {"content": _raw(r'{"a\u0000": 1}')}, 422, "payload"),
    ("escaped lone surrogate", {"content": _raw(r'["\ud800"]')}, 422, "payload"),
    ("escaped lone surrogate key", {"content": _raw(r'{"\udfff": 1}')}, 422, "payload"),
    ("raw surrogate bytes", {"content": _raw('"').rstrip(b"}") + b'\xed\xa0\x80"}'},
     422, "payload"),
    ("too deep", {"json": {"task_type": "echo", "payload": nested(65)}}, 422, "payload"),
    ("extra field", {"json": {"task_type": "echo", "bogus": 1}}, 422, "bogus"),
    ("bad task name", {"json": {"task_type": "has space"}}, 422, "task_type"),
    ("task name too long", {"json": {"task_type": "a" * 129}}, 422, "task_type"),
    ("task name surrogate", {"content": b'{"task_type": "\\ud800"}'}, 422, "task_type"),
    ("bad queue", {"json": {"task_type": "echo", "queue": "-x"}}, 422, "queue"),
    ("queue trailing newline", {"json": {"task_type": "echo", "queue": "q\n"}}, 422, "queue"),
    ("priority too high", {"json": {"task_type": "echo", "priority": 1001}}, 422, "priority"),
    ("priority too low", {"json": {"task_type": "echo", "priority": -1001}}, 422, "priority"),
    ("priority bool", {"json": {"task_type": "echo", "priority": True}}, 422, "priority"),
    ("priority fraction", {"json": {"task_type": "echo", "priority": 1.5}}, 422, "priority"),
    ("max_attempts 0", {"json": {"task_type": "echo", "max_attempts": 0}}, 422, "max_attempts"),
    ("max_attempts 1001", {"json": {"task_type": "echo", "max_attempts": 1001}}, 422,
     "max_attempts"),
    ("run_at and delay", {"json": {"task_type": "echo", "run_at": "2030-01-01T00:00:00Z",
                                   "delay_seconds": 5}}, 422, "body"),
    ("negative delay", {"json": {"task_type": "echo", "delay_seconds": -1}}, 422,
     "delay_seconds"),
    ("delay over a year", {"json": {"task_type": "echo", "delay_seconds": 400 * 86400}}, 422,
     "delay_seconds"),
    ("NaN delay", {"content": b'{"task_type": "echo", "delay_seconds": NaN}'}, 422,
     "delay_seconds"),
    ("bad run_at", {"json": {"task_type": "echo", "run_at": "tomorrow"}}, 422, "run_at"),
    ("run_at overflows UTC", {"json": {"task_type": "echo",
                                       "run_at": "9999-12-31T23:00:00-05:00"}}, 422, "run_at"),
    ("empty idempotency key", {"json": {"task_type": "echo", "idempotency_key": ""}}, 422,
     "idempotency_key"),
    ("long idempotency key", {"json": {"task_type": "echo", "idempotency_key": "k" * 256}},
     422, "idempotency_key"),
    ("NUL idempotency key", {"json": {"task_type": "echo", "idempotency_key": "a\x00"}}, 422,
     "idempotency_key"),
    ("body is a list", {"json": [1, 2]}, 422, "body"),
    ("malformed JSON", {"content": b'{"task_type": '}, 422, "body"),
    ("not JSON content type", {"content": b"task_type=echo",
                               "headers": {"content-type": "text/plain"}}, 422, "body"),
    ("query NUL payload", {"params": {"task_type": "echo", "payload": "a\x00b"}}, 422,
     "payload"),
    ("query bad priority", {"params": {"task_type": "echo", "priority": "high"}}, 422,
     "priority"),
    ("query bad queue", {"params": {"task_type": "echo", "queue": "a b"}}, 422, "queue"),
    ("query unknown parameter", {"params": {"task_type": "echo", "bogus": "1"}}, 422, "bogus"),
    ("query run_at and delay", {"params": {"task_type": "echo", "delay_seconds": "1",
                                           "run_at": "2030-01-01T00:00:00"}}, 422, "query"),
    ("nesting beyond the parser", {"content": _raw("[" * 100_000 + "]" * 100_000)}, 400, ""),
]


def test_invalid_submissions_are_problems_and_store_nothing(
    client: httpx.Client, store: SqlStore
) -> None:
    for name, kwargs, status, field in INVALID:
        kwargs = dict(kwargs)
        if "content" in kwargs:
            kwargs.setdefault("headers", {"content-type": "application/json"})
        resp = client.post("/jobs", **kwargs)
        assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text}"
        p = problem(resp, status)
        if status == 422:
            assert p["type"] == "urn:jobq:problem:validation-error", name
            locs = [e["loc"] for e in p["errors"]]
            assert any(field in loc for loc in locs), f"{name}: {locs}"
            assert all(set(e) == {"loc", "msg", "type"} for e in p["errors"]), name
            if field not in ("body", "query"):
                assert field in p["detail"], f"{name}: {p['detail']}"
    assert stored_ids(store) == []
    listing = client.get("/jobs")
    assert listing.status_code == 200 and listing.json()["items"] == []


def test_rejections_name_where_in_the_payload(client: httpx.Client) -> None:
    resp = client.post("/jobs", content=_raw(r'{"a": [0, {"b": "x\u0000"}]}'),
                       headers={"content-type": "application/json"})
    detail = problem(resp, 422)["detail"]
    assert 'payload["a"][1]["b"]' in detail and "NUL" in detail
    resp = client.post("/jobs", json={"task_type": "echo", "payload": nested(65)})
    assert "64" in problem(resp, 422)["detail"]


def test_payload_round_trips_at_the_limits(client: httpx.Client, store: SqlStore) -> None:
    deep = nested(64)
    job = submit(client, task_type="echo", payload=deep)
    assert job["payload"] == deep
    assert client.get(f"/jobs/{job['id']}").json()["payload"] == deep
    odd = {
        "unicode": "héllo wörld ✓ 𝄞 🎉",
        "escapes": "quote \" backslash \\ newline \n tab \t",
        "big": 12345678901234567890123,
        "neg": -0.5,
        "tiny": 1e-300,
        "empty": [{}, [], ""],
        "": "empty key",
    }
    job = submit(client, task_type="echo", payload=odd)
    assert client.get(f"/jobs/{job['id']}").json()["payload"] == odd
    assert store.get(job["id"]).payload == odd
    for scalar in (None, 0, "s", 3.25, False):
        assert submit(client, task_type="echo", payload=scalar)["payload"] == scalar


def test_body_too_large_is_413(client: httpx.Client, store: SqlStore) -> None:
    resp = client.post("/jobs", json={"task_type": "echo", "payload": "x" * (2 * 1024 * 1024)})
    problem(resp, 413)
    assert stored_ids(store) == []


def test_run_at_and_delay_seconds(client: httpx.Client) -> None:
    naive = submit(client, task_type="echo", run_at="2030-01-02T03:04:05")
    assert parse_time(naive["run_at"]) == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    offset = submit(client, task_type="echo", run_at="2030-01-01T01:00:00+02:00")
    assert parse_time(offset["run_at"]) == datetime(2029, 12, 31, 23, 0, tzinfo=timezone.utc)
    delayed = submit(client, task_type="echo", delay_seconds=3600)
    delay = parse_time(delayed["run_at"]) - parse_time(delayed["created_at"])
    assert timedelta(seconds=3590) <= delay <= timedelta(seconds=3610)
    now = submit(client, task_type="echo")
    assert parse_time(now["run_at"]) - parse_time(now["created_at"]) < timedelta(seconds=5)


# -- reading ----------------------------------------------------------------------------------


def test_get_job_with_its_attempts(client: httpx.Client, store: SqlStore) -> None:
    job = submit(client, task_type="fail", payload={"n": 1}, max_attempts=2)
    fresh = client.get(f"/jobs/{job['id']}").json()
    assert fresh["attempt_log"] == [] and fresh["state"] == "pending"

    (claimed,) = store.claim("worker-a", ["default"], 5, 30)
    running = client.get(f"/jobs/{job['id']}").json()
    assert running["state"] == "running" and running["worker_id"] == "worker-a"
    assert running["lease_expires_at"] is not None and "lease_token" not in running
    assert [a["outcome"] for a in running["attempt_log"]] == ["running"]
    assert store.fail(claimed.lease, "boom 1", "Traceback: one", 0) is not None

    (claimed,) = store.claim("worker-b", ["default"], 5, 30)
    store.fail(claimed.lease, "boom 2", "Traceback: two", 0)

    resp = client.get(f"/jobs/{job['id']}")
    assert resp.status_code == 200
    got = resp.json()
    assert set(got) == JOB_KEYS | {"attempt_log", "parents", "children"}
    assert got["state"] == "failed" and got["attempts"] == 2
    assert got["last_error"] == "boom 2" and got["finished_at"] is not None
    log = got["attempt_log"]
    assert [(a["attempt"], a["worker_id"], a["outcome"], a["error"], a["traceback"])
            for a in log] == [
        (1, "worker-a", "error", "boom 1", "Traceback: one"),
        (2, "worker-b", "error", "boom 2", "Traceback: two"),
    ]
    for a in log:
        assert set(a) == {"attempt", "worker_id", "started_at", "finished_at", "outcome",
                          "error", "traceback"}
        assert parse_time(a["finished_at"]) >= parse_time(a["started_at"])


def test_get_job_shows_snoozed_and_handler_cancelled_attempts(
    client: httpx.Client, store: SqlStore
) -> None:
    job = submit(client, task_type="echo", max_attempts=1)
    (claimed,) = store.claim("worker-a", ["default"], 5, 30)
    assert store.snooze(claimed.lease, 0, max_snoozes=5) is not None
    (claimed,) = store.claim("worker-b", ["default"], 5, 30)
    assert claimed.lease.attempt == 1  # the snooze was not charged
    assert store.cancel_running(claimed.lease, "not wanted")
    got = client.get(f"/jobs/{job['id']}").json()
    assert got["state"] == "cancelled" and got["attempts"] == 1
    assert got["last_error"] == "not wanted"
    assert [(a["attempt"], a["worker_id"], a["outcome"], a["error"][:8])
            for a in got["attempt_log"]] == [
        (1, "worker-a", "released", "snoozed:"),
        (1, "worker-b", "cancelled", "not want"),
    ]


def test_get_done_job_shows_result(client: httpx.Client, store: SqlStore) -> None:
    job = submit(client, task_type="echo", payload=[1, 2])
    (claimed,) = store.claim("w", ["default"], 1, 30)
    assert store.complete(claimed.lease, {"echoed": [1, 2]})
    got = client.get(f"/jobs/{job['id']}").json()
    assert got["state"] == "done" and got["result"] == {"echoed": [1, 2]}
    assert [a["outcome"] for a in got["attempt_log"]] == ["done"]
    # Who ran it stays (the done row is the record of its successful attempt); the lease goes.
    assert got["worker_id"] == "w" and got["lease_expires_at"] is None
    assert got["attempt_log"][0]["worker_id"] == "w"


def test_missing_job_is_404_problem(client: httpx.Client) -> None:
    p = problem(client.get("/jobs/12345"), 404, "urn:jobq:problem:job-not-found")
    assert p["job_id"] == 12345 and "12345" in p["detail"]
    assert p["instance"] == "/jobs/12345"
    problem(client.post("/jobs/12345/cancel"), 404, "urn:jobq:problem:job-not-found")
    problem(client.post("/jobs/12345/retry"), 404, "urn:jobq:problem:job-not-found")
    for bad in ("0", "-1", "abc", str(2**63), "1.5"):
        p = problem(client.get(f"/jobs/{bad}"), 422, "urn:jobq:problem:validation-error")
        assert p["errors"][0]["loc"] == ["path", "job_id"]


def test_list_filters_and_cursor_paging(client: httpx.Client) -> None:
    made = [
        submit(client, task_type="echo", queue="default"),
        submit(client, task_type="noop", queue="default"),
        submit(client, task_type="echo", queue="emails"),
        submit(client, task_type="echo", queue="default"),
        submit(client, task_type="noop", queue="emails"),
        submit(client, task_type="echo", queue="default"),
        submit(client, task_type="echo", queue="emails"),
    ]
    ids = [j["id"] for j in made]
    newest_first = sorted(ids, reverse=True)
    assert client.post(f"/jobs/{ids[1]}/cancel").status_code == 200
    assert client.post(f"/jobs/{ids[4]}/cancel").status_code == 200

    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        resp = client.get("/jobs", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"items", "next_cursor"}
        pages.append([j["id"] for j in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]

    def listed(**params: Any) -> list[int]:
        resp = client.get("/jobs", params=params)
        assert resp.status_code == 200, resp.text
        return [j["id"] for j in resp.json()["items"]]

    assert listed() == newest_first
    assert listed(state="cancelled") == [ids[4], ids[1]]
    assert listed(state="pending") == [i for i in newest_first if i not in (ids[1], ids[4])]
    assert listed(state="done") == []
    assert listed(queue="emails") == [ids[6], ids[4], ids[2]]
    assert listed(task_type="noop") == [ids[4], ids[1]]
    assert listed(queue="default", task_type="echo", state="pending") == [ids[5], ids[3], ids[0]]
    assert listed(queue="nowhere") == []
    # Paging honours the filters too.
    first = client.get("/jobs", params={"queue": "default", "limit": 2}).json()
    assert [j["id"] for j in first["items"]] == [ids[5], ids[3]]
    rest = client.get(
        "/jobs", params={"queue": "default", "limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [j["id"] for j in rest["items"]] == [ids[1], ids[0]]
    assert rest["next_cursor"] is None
    assert client.get("/jobs", params={"limit": 7}).json()["next_cursor"] is None


def test_list_rejects_bad_parameters(client: httpx.Client) -> None:
    submit(client, task_type="echo")
    for params, loc in [
        ({"state": "bogus"}, ["query", "state"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 501}, ["query", "limit"]),
        ({"limit": "x"}, ["query", "limit"]),
        ({"queue": "bad queue"}, ["query", "queue"]),
        ({"task_type": "a\x00"}, ["query", "task_type"]),
        ({"cursor": ""}, ["query", "cursor"]),
    ]:
        p = problem(client.get("/jobs", params=params), 422, "urn:jobq:problem:validation-error")
        assert p["errors"][0]["loc"] == loc, params
    for cursor in ("garbage!", "ag", "0", "x" * 128):
        problem(client.get("/jobs", params={"cursor": cursor}), 422,
                "urn:jobq:problem:invalid-cursor")
    assert client.get("/jobs", params={"limit": 500}).status_code == 200


def test_cursor_beyond_bigint_is_invalid(client: httpx.Client) -> None:
    for value in (2**63, 10**30):
        cursor = base64.urlsafe_b64encode(f"j{value}".encode()).decode().rstrip("=")
        problem(client.get("/jobs", params={"cursor": cursor}), 422,
                "urn:jobq:problem:invalid-cursor")


# -- cancel and retry -------------------------------------------------------------------------


def test_cancel_and_retry_paths(client: httpx.Client, store: SqlStore) -> None:
    job = submit(client, task_type="echo", max_attempts=1)
    jid = job["id"]

    cancelled = client.post(f"/jobs/{jid}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["finished_at"]
    again = client.post(f"/jobs/{jid}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    assert again.json()["finished_at"] == cancelled.json()["finished_at"]

    retried = client.post(f"/jobs/{jid}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "pending" and retried.json()["finished_at"] is None
    p = problem(client.post(f"/jobs/{jid}/retry"), 409, "urn:jobq:problem:invalid-transition")
    assert p["state"] == "pending" and p["job_id"] == jid

    # running -> cancelled closes the attempt.
    (claimed,) = store.claim("w1", ["default"], 1, 30)
    assert claimed.job.id == jid
    problem(client.post(f"/jobs/{jid}/retry"), 409, "urn:jobq:problem:invalid-transition")
    resp = client.post(f"/jobs/{jid}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == "cancelled"
    assert resp.json()["worker_id"] is None
    log = client.get(f"/jobs/{jid}").json()["attempt_log"]
    assert [a["outcome"] for a in log] == ["cancelled"]
    assert not store.complete(claimed.lease, "late")  # fencing: the lost lease changes nothing

    # failed -> retry -> pending; failed cannot be cancelled.
    client.post(f"/jobs/{jid}/retry")
    (claimed,) = store.claim("w1", ["default"], 1, 30)
    assert store.fail(claimed.lease, "boom", "tb", 0) is not None
    assert client.get(f"/jobs/{jid}").json()["state"] == "failed"
    p = problem(client.post(f"/jobs/{jid}/cancel"), 409, "urn:jobq:problem:invalid-transition")
    assert p["state"] == "failed"
    retried = client.post(f"/jobs/{jid}/retry").json()
    assert retried["state"] == "pending" and retried["attempts"] == 0

    # done is final.
    (claimed,) = store.claim("w1", ["default"], 1, 30)
    assert store.complete(claimed.lease, {"ok": True})
    p = problem(client.post(f"/jobs/{jid}/cancel"), 409, "urn:jobq:problem:invalid-transition")
    assert p["state"] == "done" and "done" in p["detail"]
    problem(client.post(f"/jobs/{jid}/retry"), 409, "urn:jobq:problem:invalid-transition")
    assert client.get(f"/jobs/{jid}").json()["state"] == "done"


# -- monitoring -------------------------------------------------------------------------------


def test_schedules_list_what_the_workers_declared(client: httpx.Client, store: SqlStore) -> None:
    assert client.get("/schedules").json() == {"schedules": []}
    store.declare_schedules([
        make_schedule("echo", "0 9 * * MON-FRI", name="daily", tz="Europe/Berlin",
                      payload={"k": 1}),
        make_schedule("noop", 30, name="often", queue="q2"),
    ])
    body = client.get("/schedules").json()
    assert [s["name"] for s in body["schedules"]] == ["daily", "often"]
    daily, often = body["schedules"]
    assert (daily["task_type"], daily["expression"], daily["tz"], daily["payload"]) == (
        "echo", "0 9 * * MON-FRI", "Europe/Berlin", {"k": 1})
    assert (often["expression"], often["queue"], often["last_run_at"], often["last_job_id"]) \
        == ("every 30s", "q2", None, None)
    assert parse_time(often["next_run_at"]) > parse_time(often["created_at"])
    problem(client.get("/schedules?name=x"), 422)


def test_stats_keys_and_counts(client: httpx.Client, store: SqlStore) -> None:
    empty = client.get("/stats")
    assert empty.status_code == 200, empty.text
    assert empty.json() == {
        "jobs": {s: 0 for s in STATES},
        "queues": {},
        "workers": [],
        "oldest_pending_age_seconds": None,
        "finished_last_minute": 0,
    }

    a = submit(client, task_type="echo")
    submit(client, task_type="echo")
    submit(client, task_type="echo", queue="emails")
    submit(client, task_type="echo", queue="later", delay_seconds=3600)
    client.post(f"/jobs/{a['id']}/cancel")
    store.register_worker("w-1", "host-1", 4242, ["default", "emails"], 4)
    (claimed,) = store.claim("w-1", ["emails"], 1, 30)

    body = client.get("/stats").json()
    assert set(body) == {"jobs", "queues", "workers", "oldest_pending_age_seconds",
                         "finished_last_minute"}
    assert body["jobs"] == {"pending": 2, "running": 1, "done": 0, "failed": 0, "cancelled": 1, "waiting": 0}
    assert body["queues"] == {
        "default": {"pending": 1, "running": 0, "done": 0, "failed": 0, "cancelled": 1, "waiting": 0},
        "emails": {"pending": 0, "running": 1, "done": 0, "failed": 0, "cancelled": 0, "waiting": 0},
        "later": {"pending": 1, "running": 0, "done": 0, "failed": 0, "cancelled": 0, "waiting": 0},
    }
    assert body["finished_last_minute"] == 1
    age = body["oldest_pending_age_seconds"]
    assert isinstance(age, float) and 0 <= age < 60
    (worker,) = body["workers"]
    assert (worker["id"], worker["host"], worker["pid"], worker["queues"]) == (
        "w-1", "host-1", 4242, ["default", "emails"],
    )
    assert set(worker) == {"id", "host", "pid", "queues", "started_at", "last_heartbeat_at"}

    store.complete(claimed.lease, None)
    body = client.get("/stats").json()
    assert body["jobs"]["done"] == 1 and body["jobs"]["running"] == 0
    assert body["finished_last_minute"] == 2


def test_healthz(client: httpx.Client) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "database": "ok"}


@pytest.fixture
def unreachable(settings: Settings, tmp_path: Path) -> Iterator[JobService]:
    """A service whose database cannot be reached: a real store with a dead address."""
    if settings.is_sqlite:
        url = f"sqlite:///{tmp_path / 'no-such-dir' / 'jobq.db'}"
    else:
        url = "postgresql://postgres@127.0.0.1:1/jobq_nowhere"
    bad = load_settings(database_url=url, db_timeout_seconds=2)
    service = JobService(SqlStore(make_engine(bad)), load_registry(bad.tasks), bad)
    yield service
    service.close()


def test_unavailable_database_is_503_with_retry_after(unreachable: JobService) -> None:
    with serve(create_app(service=unreachable)) as client:
        for resp in (
            client.get("/healthz"),
            client.get("/jobs"),
            client.get("/stats"),
            client.get("/jobs/1"),
            client.post("/jobs", json={"task_type": "echo"}),
        ):
            p = problem(resp, 503, "urn:jobq:problem:store-unavailable")
            assert int(resp.headers["retry-after"]) > 0
            text = resp.text.lower()
            for leak in ("5432", "127.0.0.1", "no-such-dir", "sqlite", "psycopg", "traceback"):
                assert leak not in text, (leak, p)


def test_unknown_route_and_wrong_method_are_problems(client: httpx.Client) -> None:
    p = problem(client.get("/nope"), 404, "about:blank")
    assert p["title"] == "Not Found" and "/nope" in p["detail"]
    resp = client.delete("/jobs")
    p = problem(resp, 405, "about:blank")
    # Starlette names the methods of the first route whose path matched.
    assert resp.headers["allow"] in {"GET", "POST"}
    assert "DELETE" in p["detail"]


def test_unexpected_errors_are_opaque_500s(settings: Settings) -> None:
    app = create_app(settings=settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("SELECT secret_column FROM jobq_jobs -- password=hunter2")

    with serve(app) as client:
        resp = client.get("/boom")
        p = problem(resp, 500, "urn:jobq:problem:internal-error")
        for leak in ("secret", "SELECT", "hunter2", "RuntimeError", "Traceback"):
            assert leak not in resp.text
        assert p["instance"] == "/boom"
        # The server survives it.
        assert client.get("/healthz").status_code == 200


def test_docs_and_openapi(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "jobq"
    post = spec["paths"]["/jobs"]["post"]
    query = {p["name"] for p in post["parameters"] if p["in"] == "query"}
    assert {"task_type", "payload"} <= query
    body_schema = json.dumps(post["requestBody"]["content"]["application/json"]["schema"])
    assert "EnqueueRequest" in body_schema
    assert {"201", "200", "409", "422"} <= set(post["responses"])
    assert PROBLEM in post["responses"]["422"]["content"]
    expected = {
        ("/jobs", "post"), ("/jobs", "get"), ("/jobs/{job_id}", "get"),
        ("/jobs/{job_id}/cancel", "post"), ("/jobs/{job_id}/retry", "post"),
        ("/stats", "get"), ("/healthz", "get"), ("/jobs/batch", "post"),
        ("/schedules", "get"), ("/queues", "get"), ("/queues/{name}/pause", "post"),
        ("/queues/{name}/resume", "post"), ("/tasks", "get"), ("/tasks/{task_type}/jobs", "post"),
        ("/jobs/cancel", "post"), ("/jobs/retry", "post"), ("/metrics", "get"),
        ("/queues/{name}", "patch"), ("/workflows/{job_id}", "get"),
    }
    # Not the typed path of each task with a payload model (tests/api/test_typed_payloads.py):
    # which tasks the process has imported depends on the tests that ran before.
    found = {(path, m) for path, ops in spec["paths"].items() for m in ops
             if not (path.startswith("/tasks/") and path.endswith("/jobs")
                     and path != "/tasks/{task_type}/jobs")}
    assert expected == found
    for path, method in expected:
        op = spec["paths"][path][method]
        assert op.get("summary") and op.get("description"), (path, method)
    job_schema = spec["components"]["schemas"]["JobOut"]["properties"]
    assert set(job_schema) == JOB_KEYS
    batch = spec["paths"]["/jobs/batch"]["post"]
    assert "BatchRequest" in json.dumps(batch["requestBody"])
    assert {"201", "200", "404", "409", "413", "422"} <= set(batch["responses"])
    assert "BatchOut" in json.dumps(batch["responses"]["201"])


# -- settings are read at startup, not at import ----------------------------------------------


def test_app_reads_settings_at_startup_not_import(
    db_url: str, store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBQ_DATABASE_URL", "not-a-database")
    app = create_app()  # must not read the (invalid) environment
    assert isinstance(app, FastAPI)
    monkeypatch.setenv("JOBQ_DATABASE_URL", db_url)
    with serve(app) as client:
        job = submit(client, task_type="echo", payload="from env")
    assert store.get(job["id"]).payload == "from env"


def test_importing_api_main_reads_no_environment() -> None:
    env = {**os.environ, "JOBQ_DATABASE_URL": "not-a-database", "JOBQ_LEASE_SECONDS": "-1"}
    code = "import api.main as m; print(type(m.app).__name__, m.app.title)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "FastAPI jobq"


# -- waits, progress, tags ---------------------------------------------------------------------


def _later(seconds: float, fn: Any) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(seconds), fn()), daemon=True)
    t.start()
    return t


def test_get_with_wait_answers_when_the_job_is_done(client: httpx.Client, store: SqlStore
                                                     ) -> None:
    job = submit(client, task_type="echo", payload={"n": 1})
    (claimed,) = store.claim("w", ["default"], 1, 30)
    store.set_progress(claimed.lease, 0.5, "half")
    running = client.get(f"/jobs/{job['id']}").json()
    assert (running["state"], running["progress"], running["progress_message"]) == (
        "running", 0.5, "half")
    assert running["progress_at"] is not None
    t = _later(0.3, lambda: store.complete(claimed.lease, "ok"))
    began = time.monotonic()
    got = client.get(f"/jobs/{job['id']}", params={"wait": 20})
    t.join()
    assert got.status_code == 200, got.text
    assert (got.json()["state"], got.json()["result"]) == ("done", "ok")
    assert 0.25 < time.monotonic() - began < 5
    assert set(got.json()) == JOB_KEYS | {"attempt_log", "parents", "children"}


def test_get_with_wait_answers_after_its_seconds_with_the_job_as_it_is(
        client: httpx.Client) -> None:
    job = submit(client, task_type="echo", delay_seconds=3600)
    began = time.monotonic()
    got = client.get(f"/jobs/{job['id']}", params={"wait": "0.5"})
    assert got.status_code == 200 and got.json()["state"] == "pending"
    assert 0.45 < time.monotonic() - began < 3
    assert client.get(f"/jobs/{job['id']}?wait=0").json()["state"] == "pending"


@pytest.mark.parametrize("query", ["wait=-1", "wait=60.5", "wait=nan", "wait=inf",
                                   "wait=soon", "wait=", "waitt=5"])
def test_get_with_a_bad_wait_is_a_422(client: httpx.Client, query: str) -> None:
    job = submit(client, task_type="echo")
    body = problem(client.get(f"/jobs/{job['id']}?{query}"), 422)
    assert body["errors"][0]["loc"][0] == "query", body


def test_a_wait_for_a_missing_job_is_a_404_at_once(client: httpx.Client) -> None:
    began = time.monotonic()
    problem(client.get("/jobs/424242?wait=30"), 404)
    assert time.monotonic() - began < 2


def test_a_client_that_goes_away_ends_its_wait(settings: Settings) -> None:
    app = create_app(settings=settings)
    with serve(app) as c:
        job = submit(c, task_type="echo", delay_seconds=3600)
        with pytest.raises(httpx.ReadTimeout):
            c.get(f"/jobs/{job['id']}?wait=30", timeout=0.5)
        waits = app.state.service._waits
        deadline = time.monotonic() + 5
        while waits.waiting:
            assert time.monotonic() < deadline, "the wait outlived its client"
            time.sleep(0.02)


def test_waits_past_jobq_max_waiters_are_a_429(settings: Settings, store: SqlStore) -> None:
    s = load_settings(**{**settings.model_dump(), "max_waiters": 1})
    with serve(create_app(settings=s)) as c:
        job = submit(c, task_type="echo", delay_seconds=3600)
        first = ThreadPoolExecutor(1).submit(c.get, f"/jobs/{job['id']}?wait=3")
        time.sleep(0.5)
        second = c.get(f"/jobs/{job['id']}?wait=3")
        problem(second, 429)
        assert "Retry-After" in second.headers
        assert first.result().status_code == 200


def test_tags_and_meta_are_taken_shown_and_filtered(client: httpx.Client) -> None:
    a = submit(client, task_type="echo", tags=["red", "big"], meta={"by": "ana"})
    assert (a["tags"], a["meta"], a["progress"]) == (["red", "big"], {"by": "ana"}, None)
    plain = submit(client, task_type="echo")
    assert (plain["tags"], plain["meta"]) == ([], {})
    batch = client.post("/jobs/batch", json={"jobs": [
        {"task_type": "echo", "tags": ["red"]}, {"task_type": "echo", "meta": {"n": 1}}]})
    assert batch.status_code == 201, batch.text
    b, c = batch.json()["jobs"]
    assert (b["tags"], c["meta"]) == (["red"], {"n": 1})
    listed = client.get("/jobs", params={"tag": "red"}).json()
    assert [j["id"] for j in listed["items"]] == [b["id"], a["id"]]
    assert client.get("/jobs", params={"tag": "none"}).json()["items"] == []
    assert client.get(f"/jobs/{a['id']}").json()["meta"] == {"by": "ana"}
    problem(client.get("/jobs", params={"tag": "not a name"}), 422)


@pytest.mark.parametrize("body, loc", [
    ({"tags": "red"}, ["body", "tags"]),
    ({"tags": ["a b"]}, ["body", "tags", 0]),
    ({"tags": [f"t{i}" for i in range(11)]}, ["body", "tags"]),
    ({"meta": [1]}, ["body", "meta"]),
    ({"meta": {"x": "y" * 5000}}, ["body", "meta"]),
])
def test_bad_tags_or_meta_are_a_422_naming_the_field(client: httpx.Client, body: Any,
                                                     loc: list[Any]) -> None:
    got = problem(client.post("/jobs", json={"task_type": "echo", **body}), 422)
    assert got["errors"][0]["loc"][:len(loc)] == loc, got
    batch = problem(client.post("/jobs/batch", json={"jobs": [
        {"task_type": "echo"}, {"task_type": "echo", **body}]}), 422)
    assert batch["errors"][0]["loc"][:3] == ["body", "jobs", 1], batch
