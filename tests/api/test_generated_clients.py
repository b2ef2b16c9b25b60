"""Clients generated from the API's own /openapi.json, used as they are, on every backend.

Two generators, both test dependencies (pyproject.toml), both run offline:

- **openapi-python-client**, the common generator for Python: it drives everything a client
  does (submit in both forms, batch, page with cursors, get, cancel, retry, stats, health) and
  reads each error back as a typed ``Problem``, in open mode (no key exists: a ``Client``
  without token) and in keyed mode (an ``AuthenticatedClient``);
- **openapi-generator** (its ``python`` generator), the generator behind most other
  languages' clients, with a stricter reading of the document (it validates it before
  generating): submit, batch, page and errors, in both modes.

Each generates a package from the document a real uvicorn server serves, with no warning
allowed (openapi-python-client) and the document validated (openapi-generator), into a
temporary folder; the tests import it and call a real server over real HTTP. Nothing
generated is patched, and no call passes anything the generated signature does not offer:
that is the point, a workaround here would be one in every user's code.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import pytest
from test_api import serve

from jobq.api import create_app
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.store.tables import api_keys

UNKNOWN_ID = 10**12


# -- the generated packages -------------------------------------------------------------------


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The document of a real server (open mode, SQLite), saved for the generators."""
    folder = tmp_path_factory.mktemp("openapi")
    settings = load_settings(database_url=f"sqlite:///{folder / 'doc.db'}")
    with serve(create_app(settings=settings)) as http:
        resp = http.get("/openapi.json")
    assert resp.status_code == 200
    path = folder / "openapi.json"
    path.write_text(resp.text)
    return path


def _generate(args: list[str]) -> None:
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{args[:4]} failed:\n{out.stdout}\n{out.stderr}"


@contextmanager
def imported(folder: Path, package: str, *modules: str) -> Iterator[SimpleNamespace]:
    """Import ``package`` (and ``package.<module>`` for each of ``modules``) from ``folder``;
    forget them again afterwards."""
    sys.path.insert(0, str(folder))
    try:
        root = importlib.import_module(package)
        yield SimpleNamespace(
            root=root, **{m.rsplit(".", 1)[-1]: importlib.import_module(f"{package}.{m}")
                          for m in modules}
        )
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


PY_OPERATIONS = ("submit_job", "submit_jobs", "list_jobs", "get_job", "cancel_job",
                 "retry_job")


@pytest.fixture(scope="module")
def pyclient(document: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The openapi-python-client package: ``root`` (Client, AuthenticatedClient), ``models``
    and one module per operation."""
    if sys.version_info < (3, 11):  # where it cannot be installed (pyproject.toml); else a must
        pytest.skip("openapi-python-client 0.29 needs Python 3.11 or newer")
    folder = tmp_path_factory.mktemp("pyclient")
    config = folder / "config.json"
    config.write_text(json.dumps({"post_hooks": []}))  # no formatter run: it needs ruff on PATH
    _generate([
        sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document),
        "--meta", "none", "--config", str(config), "--fail-on-warning",
        "--output-path", str(folder / "jobq_pyclient"),
    ])
    modules = ["models", *(f"api.jobs.{op}" for op in PY_OPERATIONS),
               "api.monitoring.stats", "api.monitoring.healthz"]
    with imported(folder, "jobq_pyclient", *modules) as ns:
        yield ns


@pytest.fixture(scope="module")
def ogclient(document: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The openapi-generator package (its ``python`` generator)."""
    folder = tmp_path_factory.mktemp("ogclient")
    _generate([
        sys.executable, "-c", "from openapi_generator_cli import cli; cli()", "generate",
        "--input-spec", str(document), "--generator-name", "python",
        "--output", str(folder), "--package-name", "jobq_ogclient",
        "--global-property", "apiTests=false,modelTests=false,apiDocs=false,modelDocs=false",
    ])
    with imported(folder, "jobq_ogclient") as ns:
        yield ns.root


# -- servers in each mode ---------------------------------------------------------------------


@pytest.fixture
def keys(store: SqlStore, service: JobService) -> Iterator[JobService]:
    """The service, on a database whose keys are removed afterwards (the PostgreSQL database
    is shared by the session: a key left behind would close the API for later tests)."""
    yield service
    with store.engine.begin() as conn:
        conn.execute(api_keys.delete())


def base_url(http: httpx.Client) -> str:
    return str(http.base_url).rstrip("/")


# -- the document itself ----------------------------------------------------------------------


def test_document_says_what_generators_need(document: Path) -> None:
    """What the clients below rely on, stated directly, so a failure names the cause."""
    doc = json.loads(document.read_text())
    operations = {(path, method): op for path, item in doc["paths"].items()
                  for method, op in item.items()}
    # Each generated function is named after its operationId: the route's own name.
    # (Less the typed path of each task with a payload model that this process imported.)
    assert sorted(op["operationId"] for (path, _), op in operations.items()
                  if not (path.startswith("/tasks/") and path.endswith("/jobs")
                          and path != "/tasks/{task_type}/jobs")) == sorted(
        [*PY_OPERATIONS, "stats", "healthz", "list_schedules", "list_queues", "pause_queue",
         "resume_queue", "list_tasks", "submit_task_job", "cancel_jobs", "retry_jobs", "metrics",
         "set_queue_limits", "get_workflow"])
    for (path, method), op in operations.items():
        for status, response in op["responses"].items():
            if int(status) >= 400:  # problems, under the media type the server sends
                assert response["content"] == {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}, (path, status)
        for parameter in op.get("parameters", []):
            assert "anyOf" not in parameter["schema"], (path, parameter["name"])
    submit = operations["/jobs", "post"]
    # The query form declares no defaults (a client would send them with every body).
    assert not [p["name"] for p in submit["parameters"] if "default" in p["schema"]]
    assert not submit["requestBody"].get("required", False)
    assert submit["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EnqueueRequest"}
    # One scheme, optional API-wide; /healthz never needs it.
    (scheme,) = doc["components"]["securitySchemes"]
    assert set(scheme) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert doc["security"] == [{scheme: []}, {}]
    assert [k for k, op in operations.items() if "security" in op] == [("/healthz", "get")]
    assert operations["/healthz", "get"]["security"] == []


# -- openapi-python-client --------------------------------------------------------------------


def test_python_client_open_mode(settings: Settings, pyclient: Any) -> None:
    m, c = pyclient.models, pyclient
    # Every function takes a plain Client, with no token, as a type checker holds callers to
    # the signature (an operation that required the key would take only an
    # AuthenticatedClient, and open mode has no token to give it).
    for op in (*PY_OPERATIONS, "stats", "healthz"):
        accepted = typing.get_args(inspect.signature(getattr(c, op).sync).parameters[
            "client"].annotation)
        assert c.root.Client in accepted, op
    with serve(create_app(settings=settings)) as http:
        client = c.root.Client(base_url=base_url(http), raise_on_unexpected_status=True)

        # Submit, the JSON body form: nothing else is sent (no query-form defaults).
        made = c.submit_job.sync_detailed(
            client=client, body=m.EnqueueRequest(task_type="echo", payload={"n": [1, 2]},
                                                 priority=5),
        )
        assert made.status_code == 201
        job = made.parsed
        assert isinstance(job, m.JobOut)
        assert (job.payload, job.priority, job.queue) == ({"n": [1, 2]}, 5, "default")
        assert job.state == m.JobState.PENDING

        # Submit, the query form (as `curl -X POST "/jobs?task_type=test&payload=hello"`).
        query_job = c.submit_job.sync(client=client, task_type="test", payload="hello")
        assert isinstance(query_job, m.JobOut)
        assert (query_job.task_type, query_job.payload, query_job.priority) == ("test", "hello", 0)

        # Batch, then the same batch again: nothing new (200).
        batch = m.BatchRequest(jobs=[
            m.EnqueueRequest(task_type="echo", payload=n, idempotency_key=f"gen-{n}")
            for n in range(3)
        ])
        first = c.submit_jobs.sync_detailed(client=client, body=batch)
        assert first.status_code == 201 and isinstance(first.parsed, m.BatchOut)
        assert [j.created for j in first.parsed.jobs] == [True, True, True]
        again = c.submit_jobs.sync_detailed(client=client, body=batch)
        assert again.status_code == 200
        assert [j.id for j in again.parsed.jobs] == [j.id for j in first.parsed.jobs]

        # Page through every job, two at a time, with the cursors.
        seen: list[int] = []
        page = c.list_jobs.sync(client=client, limit=2)
        while True:
            assert isinstance(page, m.JobPage) and len(page.items) <= 2
            seen += [j.id for j in page.items]
            if not page.next_cursor:
                break
            page = c.list_jobs.sync(client=client, limit=2, cursor=page.next_cursor)
        made_ids = {job.id, query_job.id, *(j.id for j in first.parsed.jobs)}
        assert sorted(seen, reverse=True) == seen and set(seen) == made_ids
        echo = c.list_jobs.sync(client=client, state=m.JobState.PENDING, task_type="echo")
        assert {j.id for j in echo.items} == made_ids - {query_job.id}

        # Get, cancel, retry.
        detail = c.get_job.sync(client=client, job_id=job.id)
        assert isinstance(detail, m.JobDetail) and detail.attempt_log == []
        assert c.cancel_job.sync(client=client, job_id=job.id).state == m.JobState.CANCELLED
        assert c.retry_job.sync(client=client, job_id=job.id).state == m.JobState.PENDING

        stats = c.stats.sync(client=client)
        assert isinstance(stats, m.StatsOut) and stats.jobs.pending == 5
        assert c.healthz.sync(client=client).status == "ok"

        # Errors, each a typed Problem with its own members.
        gone = c.get_job.sync(client=client, job_id=UNKNOWN_ID)
        assert isinstance(gone, m.Problem)
        assert (gone.status, gone.type_, gone.job_id) == (
            404, "urn:jobq:problem:job-not-found", UNKNOWN_ID)
        busy = c.retry_job.sync(client=client, job_id=query_job.id)
        assert isinstance(busy, m.Problem) and busy.status == 409
        assert busy.state == m.JobState.PENDING and busy.job_id == query_job.id
        unknown = c.submit_job.sync(client=client, body=m.EnqueueRequest(task_type="nope"))
        assert isinstance(unknown, m.Problem) and unknown.type_ == "urn:jobq:problem:unknown-task"
        assert "echo" in unknown.known_task_types
        invalid = c.submit_job.sync(
            client=client, body=m.EnqueueRequest(task_type="echo", priority=5000))
        assert isinstance(invalid, m.Problem) and invalid.status == 422
        (error,) = invalid.errors
        assert isinstance(error, m.ValidationProblemItem) and error.loc == ["body", "priority"]
        both = c.submit_job.sync(
            client=client, body=m.EnqueueRequest(task_type="echo"), queue="default")
        assert isinstance(both, m.Problem) and both.errors[0].loc == ["query", "queue"]
        bad_item = c.submit_jobs.sync(client=client, body=m.BatchRequest(jobs=[
            m.EnqueueRequest(task_type="echo"), m.EnqueueRequest(task_type="nope"),
        ]))
        assert isinstance(bad_item, m.Problem) and bad_item.errors[0].loc == [
            "body", "jobs", 1, "task_type"]


def test_python_client_keyed_mode(
    settings: Settings, keys: JobService, pyclient: Any, document: Path
) -> None:
    m, c = pyclient.models, pyclient
    admin = keys.create_key("gen-admin", ["*"], ["admin"])[1]
    reader = keys.create_key("gen-reader", ["*"], ["read"])[1]
    with serve(create_app(settings=settings)) as http:
        # The document does not depend on the mode, so one client serves both.
        assert http.get("/openapi.json").json() == json.loads(document.read_text())
        url = base_url(http)
        authed = c.root.AuthenticatedClient(base_url=url, token=admin,
                                            raise_on_unexpected_status=True)
        job = c.submit_job.sync(client=authed, body=m.EnqueueRequest(task_type="echo"))
        assert isinstance(job, m.JobOut)
        queried = c.submit_job.sync(client=authed, task_type="test", payload="hi")
        assert isinstance(queried, m.JobOut) and queried.payload == "hi"
        batch = c.submit_jobs.sync(client=authed, body=m.BatchRequest(
            jobs=[m.EnqueueRequest(task_type="noop")]))
        assert isinstance(batch, m.BatchOut) and batch.jobs[0].created
        assert [j.id for j in c.list_jobs.sync(client=authed).items] == [
            batch.jobs[0].id, queried.id, job.id]
        assert c.cancel_job.sync(client=authed, job_id=job.id).state == m.JobState.CANCELLED
        assert c.retry_job.sync(client=authed, job_id=job.id).state == m.JobState.PENDING
        assert isinstance(c.get_job.sync(client=authed, job_id=job.id), m.JobDetail)

        # Without a token: a typed 401, and /healthz still answers.
        anonymous = c.root.Client(base_url=url, raise_on_unexpected_status=True)
        refused = c.list_jobs.sync_detailed(client=anonymous)
        assert refused.status_code == 401 and isinstance(refused.parsed, m.Problem)
        assert refused.parsed.type_ == "urn:jobq:problem:unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert c.healthz.sync(client=anonymous).status == "ok"

        # A key without the scope: a typed 403 that names it.
        read_only = c.root.AuthenticatedClient(base_url=url, token=reader)
        forbidden = c.submit_job.sync(client=read_only, body=m.EnqueueRequest(task_type="echo"))
        assert isinstance(forbidden, m.Problem) and forbidden.status == 403
        assert forbidden.required_scope == "enqueue"


# -- openapi-generator ------------------------------------------------------------------------


def test_openapi_generator_client_both_modes(
    settings: Settings, keys: JobService, ogclient: ModuleType
) -> None:
    og = ogclient
    # The state filter is typed as the enum (a parameter declared "JobState or null" was Any).
    assert "JobState" in str(inspect.signature(og.JobsApi.list_jobs).parameters["state"])

    def exercise(config: Any) -> None:
        with og.ApiClient(config) as api:
            jobs = og.JobsApi(api)
            made = jobs.submit_job_with_http_info(
                enqueue_request=og.EnqueueRequest(task_type="echo", payload={"n": 1}))
            assert made.status_code == 201 and made.data.payload == {"n": 1}
            job = made.data
            queried = jobs.submit_job(task_type="test", payload="hello")
            assert (queried.payload, queried.queue, queried.priority) == ("hello", "default", 0)
            batch = jobs.submit_jobs(og.BatchRequest(jobs=[
                og.EnqueueRequest(task_type="noop"), og.EnqueueRequest(task_type="noop")]))
            assert [j.created for j in batch.jobs] == [True, True]
            page = jobs.list_jobs(limit=2, state=og.JobState.PENDING)
            rest = jobs.list_jobs(limit=2, cursor=page.next_cursor)
            assert [j.id for j in page.items + rest.items] == [
                *(j.id for j in reversed(batch.jobs)), queried.id, job.id]
            assert jobs.cancel_job(job.id).state == og.JobState.CANCELLED
            assert jobs.retry_job(job.id).state == og.JobState.PENDING
            assert jobs.get_job(job.id).attempt_log == []
            with pytest.raises(og.exceptions.NotFoundException) as gone:
                jobs.get_job(UNKNOWN_ID)
            assert isinstance(gone.value.data, og.Problem)
            assert (gone.value.data.type, gone.value.data.job_id) == (
                "urn:jobq:problem:job-not-found", UNKNOWN_ID)
            with pytest.raises(og.exceptions.UnprocessableEntityException) as invalid:
                jobs.submit_job(enqueue_request=og.EnqueueRequest(task_type="nope"))
            assert isinstance(invalid.value.data, og.Problem)
            assert "echo" in invalid.value.data.known_task_types
            with pytest.raises(og.exceptions.UnprocessableEntityException) as both:
                jobs.submit_job(queue="default",
                                enqueue_request=og.EnqueueRequest(task_type="echo"))
            (error,) = both.value.data.errors  # a ValidationProblemItem; loc items str or int
            assert [part.actual_instance for part in error.loc] == ["query", "queue"]

    with serve(create_app(settings=settings)) as http:
        exercise(og.Configuration(host=base_url(http)))  # open mode: no token

    token = keys.create_key("gen-og", ["*"], ["admin"])[1]
    with serve(create_app(settings=settings)) as http:
        exercise(og.Configuration(host=base_url(http), access_token=token))
        with og.ApiClient(og.Configuration(host=base_url(http))) as api:
            with pytest.raises(og.exceptions.UnauthorizedException) as refused:
                og.JobsApi(api).list_jobs()
        assert isinstance(refused.value.data, og.Problem)
        assert refused.value.data.type == "urn:jobq:problem:unauthorized"
