"""Typed payloads: a handler annotated with a pydantic model gets an instance of it, and a
submission is checked against it when it is made (Python raises, REST answers 422 naming the
field, nothing is stored). ``GET /tasks`` lists each task's schema; the OpenAPI document
has a typed operation per such task, which a generated client turns into a typed function.
On every backend, through a real server; jobs run through the worker's own executor.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobq.api import create_app
from jobq.errors import ConfigError, InvalidJob
from jobq.payloads import InvalidPayload
from jobq.registry import TaskRegistry, load_registry
from jobq.schedules import make_schedule
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.types import Failure, NewJob, Success
from jobq.worker.executor import run_claimed
from test_api import problem, serve
from test_generated_clients import imported

TASKS = ["typed_tasks"]


@pytest.fixture
def typed(settings: Settings) -> Settings:
    return load_settings(**{**settings.model_dump(), "tasks": TASKS})


@pytest.fixture
def svc(typed: Settings, store: SqlStore) -> JobService:
    return JobService(store, load_registry(TASKS), typed)


@pytest.fixture
def http(typed: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings=typed)) as client:
        yield client


def run(svc: JobService, store: SqlStore) -> Any:
    (claimed,) = store.claim("w-typed", ["default"], 1, 30)
    return asyncio.run(run_claimed(claimed, svc.registry, "w-typed", threading.Event()))


# -- in Python --------------------------------------------------------------------------------


def test_the_handler_gets_its_model_and_the_stored_payload_is_its_json(
    svc: JobService, store: SqlStore
) -> None:
    job = svc.enqueue("typed_send", {"to": "ana"}).job
    # Stored as the model's JSON: the defaults are in it, so every reader sees them.
    assert store.get(job.id).payload == {"to": "ana", "subject": "hello", "copies": 1}
    outcome = run(svc, store)
    assert outcome == Success({"model": "Email", "to": "ana", "subject": "hello", "copies": 1})

    svc.enqueue("typed.resize", {"image": "a.png", "width": "640"})  # lax: "640" is 640
    assert run(svc, store) == Success("Resize:a.png@640")

    # A task without a model takes any JSON value, as before.
    assert svc.enqueue("echo", [1, "x"]).job.payload == [1, "x"]


def test_a_payload_its_model_refuses_is_refused_at_submission(
    svc: JobService, store: SqlStore
) -> None:
    with pytest.raises(InvalidPayload) as info:
        svc.enqueue("typed_send", {"subject": 5, "copies": 99})
    exc = info.value
    assert isinstance(exc, InvalidJob) and exc.field == "payload.to"
    assert {loc for loc, _ in exc.errors} == {("to",), ("subject",), ("copies",)}
    with pytest.raises(InvalidPayload) as info:
        svc.enqueue_many([{"task_type": "typed_send", "payload": {"to": "a"}},
                          {"task_type": "typed_send", "payload": None}])
    assert info.value.index == 1
    assert store.list_jobs(limit=10).items == []


def test_a_stored_payload_that_no_longer_fits_fails_its_job_without_retries(
    svc: JobService, store: SqlStore
) -> None:
    # Written past the service, as a job queued before its model changed would be.
    store.enqueue(NewJob(task_type="typed_send", payload={"too": "old"}, max_attempts=5))
    outcome = run(svc, store)
    assert isinstance(outcome, Failure) and outcome.final
    assert outcome.error.startswith("InvalidPayload: the payload no longer fits")


def test_a_schedule_whose_payload_does_not_fit_is_refused_at_start() -> None:
    from typed_tasks import Email, send

    registry = TaskRegistry()
    registry.register("mail", send)
    assert registry.get("mail").payload_model is Email
    registry.add_schedule(make_schedule("mail", 60, payload={"to": "ops"}))
    registry.check_schedules()
    registry.add_schedule(make_schedule("mail", 30, name="broken", payload={"copies": 0}))
    with pytest.raises(ConfigError, match="schedule 'broken'.*payload.to"):
        registry.check_schedules()


# -- over REST --------------------------------------------------------------------------------


def test_rest_answers_422_naming_each_field_and_stores_nothing(
    http: httpx.Client, store: SqlStore
) -> None:
    p = problem(http.post("/jobs", json={"task_type": "typed_send",
                                         "payload": {"subject": 3}}), 422)
    assert {tuple(e["loc"]) for e in p["errors"]} == {("body", "payload", "to"),
                                                      ("body", "payload", "subject")}
    assert "payload.to" in p["detail"]
    p = problem(http.post("/jobs/batch", json={"jobs": [
        {"task_type": "typed_send", "payload": {"to": "a"}},
        {"task_type": "typed_send", "payload": {"to": "b", "copies": 0}}]}), 422)
    assert [e["loc"] for e in p["errors"]] == [["body", "jobs", 1, "payload", "copies"]]
    p = problem(http.post("/tasks/typed_send/jobs", json={"payload": {}}), 422)
    assert [e["loc"] for e in p["errors"]] == [["body", "payload", "to"]]
    assert store.list_jobs(limit=10).items == []

    made = http.post("/tasks/typed_send/jobs", json={"payload": {"to": "ana"},
                                                     "idempotency_key": "k"})
    assert made.status_code == 201, made.text
    assert made.json()["payload"] == {"to": "ana", "subject": "hello", "copies": 1}
    again = http.post("/tasks/typed_send/jobs", json={"payload": {"to": "ana"},
                                                      "idempotency_key": "k"})
    assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
    problem(http.post("/tasks/typed_send/jobs", json={"task_type": "echo", "payload": {}}), 422)
    p = problem(http.post("/tasks/nope/jobs", json={}), 422, "urn:jobq:problem:unknown-task")
    assert "typed_send" in p["known_task_types"]


def test_get_tasks_lists_each_task_with_its_schema(http: httpx.Client) -> None:
    resp = http.get("/tasks")
    assert resp.status_code == 200, resp.text
    tasks = {t["name"]: t for t in resp.json()["tasks"]}
    send = tasks["typed_send"]
    assert send["max_attempts"] == 2 and not send["is_async"]
    assert send["payload_schema"]["required"] == ["to"]
    assert set(send["payload_schema"]["properties"]) == {"to", "subject", "copies"}
    assert tasks["typed.resize"]["is_async"]
    assert tasks["echo"]["payload_schema"] is None
    problem(http.get("/tasks?x=1"), 422)


def test_the_document_has_a_typed_operation_per_typed_task(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    op = doc["paths"]["/tasks/typed_send/jobs"]["post"]
    assert op["operationId"] == "submit_typed_send" and "parameters" not in op
    body_ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]
    assert body["properties"]["payload"]["$ref"] == "#/components/schemas/Email"
    assert "payload" in body["required"] and "task_type" not in body["properties"]
    assert doc["components"]["schemas"]["Email"]["required"] == ["to"]
    assert doc["paths"]["/tasks/typed.resize/jobs"]["post"]["operationId"] == \
        "submit_typed_resize"
    assert "/tasks/echo/jobs" not in doc["paths"]  # untyped: the generic path serves it


def test_a_generated_client_has_a_typed_function_per_task(
    http: httpx.Client, tmp_path: Path
) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("openapi-python-client 0.29 needs Python 3.11 or newer")
    document = tmp_path / "openapi.json"
    document.write_text(http.get("/openapi.json").text)
    (tmp_path / "config.json").write_text(json.dumps({"post_hooks": []}))
    out = subprocess.run([
        sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document),
        "--meta", "none", "--config", str(tmp_path / "config.json"), "--fail-on-warning",
        "--output-path", str(tmp_path / "typed_client"),
    ], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    with imported(tmp_path, "typed_client", "models", "api.tasks.submit_typed_send") as c:
        client = c.root.Client(base_url=str(http.base_url), raise_on_unexpected_status=True)
        body = c.models.TypedSendJob(payload=c.models.Email(to="ana", copies=2))
        job = c.submit_typed_send.sync(client=client, body=body)
        assert isinstance(job, c.models.JobOut)
        assert job.task_type == "typed_send"
        assert job.payload == {"to": "ana", "subject": "hello", "copies": 2}
