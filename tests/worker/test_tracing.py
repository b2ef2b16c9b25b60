"""OpenTelemetry (``jobq.tracing``): the trace of whoever enqueued a job continues in the span
of its run. Jobs are enqueued in a span (Python) or with a ``traceparent`` header (a real
uvicorn server), run by a real Worker, and the SDK's in-memory exporter shows the spans; on
both backends. Without OpenTelemetry (``tracing.ENABLED`` False) jobq runs the same."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

import jobq
from jobq import tracing
from jobq.api import create_app
from jobq.registry import JobContext, TaskRegistry
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.types import JobState, NewJob
from jobq.worker import Worker

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("tests")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"

#: What the handlers saw: the current span's context while they ran (by payload).
seen: dict[str, Any] = {}
service_of_handlers: list[JobService] = []


async def traced(payload: Any, ctx: JobContext) -> str:
    seen["async", payload] = trace.get_current_span().get_span_context()
    with TRACER.start_as_current_span("inside the handler"):
        await asyncio.sleep(0)
    if payload == "and a child" and service_of_handlers:
        await service_of_handlers[0].enqueue_async("traced", "child")
    return "ok"


async def fails(payload: Any) -> None:
    raise ValueError("boom")


def in_a_thread(payload: Any) -> str:
    seen["def"] = trace.get_current_span().get_span_context()
    return "ok"


def registry() -> TaskRegistry:
    reg = TaskRegistry()
    reg.register("traced", traced)
    reg.register("fails", fails, max_attempts=1)
    reg.register("in_a_thread", in_a_thread)
    return reg


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    """jobq's spans go to this test's provider (not the global one, which stays unset)."""
    tracing.set_tracer_provider(PROVIDER)
    EXPORTER.clear()
    seen.clear()
    yield EXPORTER
    tracing.set_tracer_provider(None)
    service_of_handlers.clear()


@pytest.fixture
def fast(db_url: str) -> Settings:
    return load_settings(database_url=db_url, lease_seconds=5, heartbeat_interval_seconds=0.2,
                         poll_interval_seconds=0.05, backoff_base_seconds=0.05)


@pytest.fixture
def service(store: SqlStore, fast: Settings) -> Iterator[JobService]:
    svc = JobService(store, registry(), fast)
    service_of_handlers.append(svc)
    yield svc


def run_all(store: SqlStore, settings: Settings) -> None:
    """Run a worker's fetcher and completer until no job is pending or running."""
    def busy() -> bool:
        return any(j.state in (JobState.PENDING, JobState.RUNNING)
                   for j in store.list_jobs(limit=100).items)

    async def main() -> None:
        worker = Worker(store, registry(), settings, concurrency=2)
        try:
            deadline = time.monotonic() + 15
            while busy():
                assert time.monotonic() < deadline, "the jobs did not finish"
                await worker.fetcher.fetch()
                await worker.completer.flush()
                await asyncio.sleep(0.02)
        finally:
            worker.db.close()

    asyncio.run(main())


def runs(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("jobq.run ")]


def run_of(exporter: InMemorySpanExporter, job_id: int) -> ReadableSpan:
    (span,) = [s for s in runs(exporter) if s.attributes["jobq.job.id"] == job_id]
    return span


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    """``app`` under uvicorn on a free port in a thread (as tests/api/test_api.py does)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           http="jobq.api.protocol:HttpProtocol"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        port = sock.getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


# -- Python enqueues --------------------------------------------------------------------------


def test_a_job_enqueued_in_a_span_runs_in_a_child_span_of_it(
        store: SqlStore, service: JobService, fast: Settings,
        spans: InMemorySpanExporter) -> None:
    with TRACER.start_as_current_span("the request") as request:
        job = service.enqueue("traced", "and a child").job
    assert job.trace_context is not None
    assert store.get(job.id).trace_context == job.trace_context
    run_all(store, fast)

    run = run_of(spans, job.id)
    asked = request.get_span_context()
    assert run.name == "jobq.run traced" and run.kind is SpanKind.CONSUMER
    assert run.context.trace_id == asked.trace_id
    assert run.parent is not None and run.parent.span_id == asked.span_id
    assert run.status.status_code is StatusCode.UNSET
    assert dict(run.attributes) == {
        "messaging.system": "jobq", "messaging.operation.type": "process",
        "messaging.destination.name": "default", "messaging.message.id": str(job.id),
        "jobq.job.id": job.id, "jobq.task_type": "traced", "jobq.attempt": 1,
        "jobq.max_attempts": job.max_attempts, "jobq.outcome": "done",
    }
    # Current while the handler ran: its own span, and the job it enqueued, are children.
    assert seen["async", "and a child"] == run.context
    inner = [s for s in spans.get_finished_spans() if s.name == "inside the handler"]
    assert [s.parent.span_id for s in inner if s.parent is not None
            and s.parent.span_id == run.context.span_id] == [run.context.span_id]
    child = next(j for j in store.list_jobs(limit=10).items if j.payload == "child")
    child_run = run_of(spans, child.id)
    assert child_run.context.trace_id == asked.trace_id
    assert child_run.parent is not None and child_run.parent.span_id == run.context.span_id


def test_a_batch_enqueued_in_a_span_shares_its_context(
        store: SqlStore, service: JobService, fast: Settings,
        spans: InMemorySpanExporter) -> None:
    given = json.dumps({"traceparent": TRACEPARENT})
    with TRACER.start_as_current_span("the batch") as batch:
        made = service.enqueue_many([{"task_type": "traced", "payload": i} for i in range(3)]
                                    + [{"task_type": "traced", "trace_context": given}])
    run_all(store, fast)
    asked = batch.get_span_context()
    for r in made[:3]:
        run = run_of(spans, r.job.id)
        assert run.context.trace_id == asked.trace_id
        assert run.parent is not None and run.parent.span_id == asked.span_id
    mine = run_of(spans, made[3].job.id)  # a spec's own context wins
    assert format(mine.context.trace_id, "032x") == TRACE_ID
    assert mine.parent is not None and format(mine.parent.span_id, "016x") == SPAN_ID


def test_a_failing_handler_has_an_error_status(
        store: SqlStore, service: JobService, fast: Settings,
        spans: InMemorySpanExporter) -> None:
    with TRACER.start_as_current_span("the request"):
        job = service.enqueue("fails").job
    run_all(store, fast)
    assert store.get(job.id).state is JobState.FAILED
    run = run_of(spans, job.id)
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "ValueError: boom"
    assert run.attributes["jobq.outcome"] == "error"
    (event,) = run.events
    assert event.name == "exception"
    assert (event.attributes["exception.type"], event.attributes["exception.message"]) == (
        "ValueError", "boom")
    assert "raise ValueError" in event.attributes["exception.stacktrace"]


def test_without_a_context_the_run_span_is_a_root(
        store: SqlStore, service: JobService, fast: Settings,
        spans: InMemorySpanExporter) -> None:
    job = service.enqueue("traced").job
    also = store.enqueue(NewJob("traced", trace_context="not a trace context")).job
    assert job.trace_context is None
    run_all(store, fast)
    for j in (job, also):
        run = run_of(spans, j.id)
        assert run.parent is None and run.context.is_valid


def test_a_def_handler_runs_in_its_span_too(
        store: SqlStore, service: JobService, fast: Settings,
        spans: InMemorySpanExporter) -> None:
    with TRACER.start_as_current_span("the request"):
        job = service.enqueue("in_a_thread").job
    run_all(store, fast)
    assert seen["def"] == run_of(spans, job.id).context


def test_without_opentelemetry_jobq_runs_the_same(
        store: SqlStore, service: JobService, fast: Settings,
        spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "ENABLED", False)
    with TRACER.start_as_current_span("the request"):
        job = service.enqueue("traced").job
        failing = service.enqueue_many([{"task_type": "fails"}])[0].job
    assert job.trace_context is None and failing.trace_context is None
    assert tracing.current_context() is None
    run_all(store, fast)
    assert store.get(job.id).state is JobState.DONE
    assert store.get(failing.id).state is JobState.FAILED
    assert runs(spans) == []


# -- REST enqueues ----------------------------------------------------------------------------


def test_a_traceparent_header_is_the_parent_of_the_run(
        store: SqlStore, service: JobService, fast: Settings,
        spans: InMemorySpanExporter) -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=value"}
    with serve(create_app(service=service)) as client:
        one = client.post("/jobs", json={"task_type": "traced"}, headers=headers)
        batch = client.post("/jobs/batch", headers=headers,
                            json={"jobs": [{"task_type": "traced"}, {"task_type": "fails"}]})
        typed = client.post("/tasks/traced/jobs", json={}, headers=headers)
        plain = client.post("/jobs", json={"task_type": "traced"})
    assert [r.status_code for r in (one, batch, typed, plain)] == [201] * 4, batch.text
    assert "trace_context" not in one.json()
    ids = [one.json()["id"], *(j["id"] for j in batch.json()["jobs"]), typed.json()["id"]]
    for i in ids:
        assert json.loads(store.get(i).trace_context or "") == headers
    assert store.get(plain.json()["id"]).trace_context is None
    run_all(store, fast)
    for i in ids:
        run = run_of(spans, i)
        assert format(run.context.trace_id, "032x") == TRACE_ID
        assert run.parent is not None and format(run.parent.span_id, "016x") == SPAN_ID
        assert run.context.trace_state.get("vendor") == "value"
    assert run_of(spans, ids[2]).status.status_code is StatusCode.ERROR
    assert run_of(spans, plain.json()["id"]).parent is None


def test_jobq_client_sends_the_current_span_with_its_enqueues(
        store: SqlStore, service: JobService, fast: Settings,
        spans: InMemorySpanExporter) -> None:
    with serve(create_app(service=service)) as http:
        client = jobq.Client(str(http.base_url), http=http)
        with TRACER.start_as_current_span("the caller") as caller:
            one = client.enqueue("traced").job
            many = client.enqueue_many([{"task_type": "traced"}])[0].job
        untraced = client.enqueue("traced").job
    run_all(store, fast)
    asked = caller.get_span_context()
    for job in (one, many):
        run = run_of(spans, job.id)
        assert run.context.trace_id == asked.trace_id
        assert run.parent is not None and run.parent.span_id == asked.span_id
    assert run_of(spans, untraced.id).parent is None


BAD_TRACEPARENTS = [
    "00-" + TRACE_ID.upper() + "-" + SPAN_ID + "-01",  # upper case
    "00-" + "0" * 32 + "-" + SPAN_ID + "-01",  # a zero trace id
    "00-" + TRACE_ID + "-" + "0" * 16 + "-01",  # a zero span id
    "ff-" + TRACE_ID + "-" + SPAN_ID + "-01",  # the version ruled out
    TRACEPARENT[:-1],
    "x" * 5000,
    "",
    "00-" + TRACE_ID + "-" + SPAN_ID + "-01\u00e9",
]


@pytest.mark.parametrize("enabled", [True, False], ids=["otel", "no-otel"])
def test_a_bad_traceparent_is_ignored_and_never_an_error(
        store: SqlStore, service: JobService, monkeypatch: pytest.MonkeyPatch,
        enabled: bool) -> None:
    monkeypatch.setattr(tracing, "ENABLED", enabled)
    with serve(create_app(service=service)) as client:
        for bad in BAD_TRACEPARENTS:
            resp = client.post("/jobs", json={"task_type": "traced"},
                               headers={"traceparent": bad.encode("latin-1", "replace")})
            assert resp.status_code == 201, (bad, resp.text)
            assert store.get(resp.json()["id"]).trace_context is None, bad
        good = client.post("/jobs", json={"task_type": "traced"},
                           headers={"traceparent": TRACEPARENT, "tracestate": "a=b"})
    assert good.status_code == 201
    kept = json.loads(store.get(good.json()["id"]).trace_context or "")
    # Without OpenTelemetry only the (checked) traceparent is kept.
    assert kept == ({"traceparent": TRACEPARENT, "tracestate": "a=b"} if enabled
                    else {"traceparent": TRACEPARENT})


_WITHOUT_OTEL = """
import sys
sys.modules["opentelemetry"] = None  # as if not installed: every import of it fails
import jobq.testing
import jobq
from jobq import tracing
assert not tracing.ENABLED
with jobq.testing.queue(tasks=["jobq.builtin_tasks"]) as q:
    job = q.enqueue("echo", {"n": 1}).job
    assert job.trace_context is None
    drained = q.drain()
    assert [j.result for j in drained.done] == [{"n": 1}], drained
print("ran")
"""


def test_jobq_runs_jobs_where_opentelemetry_cannot_be_imported() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _WITHOUT_OTEL], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ran", out.stderr
