"""Completion webhooks delivered for real: a ``jobq.webhook`` job (the payload the store
enqueues when a job with a callback_url becomes final) run by a whole worker, POSTing to an
HTTP receiver on 127.0.0.1 in a thread. Both backends."""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from jobq import webhooks
from jobq.registry import TaskRegistry, load_registry
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.types import Job, JobState, NewJob
from serving import serve

SECRET = "whsec_test_0123456789abcdef"
WHEN = datetime(2026, 12, 7, 14, 30, 0, 250000, tzinfo=timezone.utc)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers as ``script``
    says, one entry per request (a status, or ("sleep", seconds) before a 200); 200 once the
    script is used up."""

    def __init__(self, port: int = 0, script: list[Any] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.script = list(script or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append((self.path, dict(self.headers.items()), body))
                action = receiver.script.pop(0) if receiver.script else 200
                if isinstance(action, tuple):
                    time.sleep(action[1])
                    action = 200
                self.send_response(action)
                if 300 <= action < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "19")
                self.end_headers()
                self.wfile.write(b"answer of the test.")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def _own_settings() -> Iterator[None]:
    """The worker hands its settings to jobq.webhooks; none of them outlives the test."""
    before = webhooks._settings
    yield
    webhooks._settings = before


@pytest.fixture
def fast(db_url: str) -> Settings:
    return load_settings(database_url=db_url, lease_seconds=5, poll_interval_seconds=0.05,
                         shutdown_grace_seconds=1, webhook_secret=SECRET,
                         webhook_allow_private=True, webhook_backoff_base_seconds=0.05,
                         webhook_backoff_cap_seconds=0.2, webhook_timeout_seconds=2)


@pytest.fixture
def registry() -> TaskRegistry:
    return load_registry([])


def deliver(store: SqlStore, settings: Settings, registry: TaskRegistry, url: str,
            state: str = "done", **job: Any) -> Job:
    """Enqueue the webhook of a (made-up) job 41 that became ``state``, run it, return it."""
    new = webhooks.webhook_job(url=url, job_id=41, state=state, task_type="resize",
                               queue="default", finished_at=WHEN, result={"resized": 2},
                               last_error="ValueError: bad image", settings=settings)
    return run(store, settings, registry, dataclasses.replace(new, **job))


def run(store: SqlStore, settings: Settings, registry: TaskRegistry, new: NewJob,
        during: Callable[[], Any] | None = None) -> Job:
    job = store.enqueue(new).job
    serve(store, settings, registry,
          lambda: store.get(job.id, with_attempts=False).state.is_final,
          None if during is None else lambda _worker: during())
    return store.get(job.id)


def check_signed(request: tuple[str, dict[str, str], bytes], webhook_job_id: int) -> dict:
    path, headers, body = request
    assert path == "/hook"
    assert webhooks.verify(SECRET, headers["X-Jobq-Signature"], body)
    assert not webhooks.verify("another secret of 16+", headers["X-Jobq-Signature"], body)
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("jobq-webhook/")
    assert headers["X-Jobq-Job-Id"] == "41"
    assert headers["X-Jobq-Delivery"] == str(webhook_job_id)
    return json.loads(body)


def test_a_webhook_is_delivered_once_signed(store: SqlStore, fast: Settings,
                                            registry: TaskRegistry,
                                            receiver: Receiver) -> None:
    job = deliver(store, fast, registry, receiver.url())
    assert job.state is JobState.DONE and job.attempts == 1
    assert job.result == {"status": 200, "address": "127.0.0.1"}
    assert len(receiver.requests) == 1
    body = check_signed(receiver.requests[0], job.id)
    assert body == {"job_id": 41, "state": "done", "task_type": "resize", "queue": "default",
                    "finished_at": "2026-12-07T14:30:00.250000Z", "result": {"resized": 2}}
    assert receiver.requests[0][2] == webhooks.body_bytes(body)  # compact, keys sorted
    assert receiver.requests[0][1]["X-Jobq-Delivery-Attempt"] == "1"


def test_a_failed_job_sends_its_error(store: SqlStore, fast: Settings, registry: TaskRegistry,
                                      receiver: Receiver) -> None:
    job = deliver(store, fast, registry, receiver.url(), state="failed")
    assert job.state is JobState.DONE
    body = check_signed(receiver.requests[0], job.id)
    assert body["state"] == "failed" and body["error"] == "ValueError: bad image"
    assert "result" not in body


def test_5xx_408_and_429_are_retried_until_delivered(store: SqlStore, fast: Settings,
                                                     registry: TaskRegistry) -> None:
    receiver = Receiver(script=[503, 500, 408, 429])
    try:
        job = deliver(store, fast, registry, receiver.url())
    finally:
        receiver.close()
    assert job.state is JobState.DONE and job.attempts == 5
    assert [a.outcome.value for a in job.attempt_log] == ["error"] * 4 + ["done"]
    assert "answered 503" in (job.attempt_log[0].error or "")
    assert len(receiver.requests) == 5
    stamps = []
    for n, request in enumerate(receiver.requests, 1):
        check_signed(request, job.id)  # each attempt signed afresh
        assert request[1]["X-Jobq-Delivery-Attempt"] == str(n)
        stamps.append(request[2])
    assert len(set(stamps)) == 1  # the same body every time


def test_a_receiver_that_is_down_gets_it_once_it_is_up(store: SqlStore, fast: Settings,
                                                       registry: TaskRegistry) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    url = f"http://127.0.0.1:{port}/hook"
    began = time.monotonic()
    started: list[Receiver] = []

    def open_after_a_while() -> None:
        if not started and time.monotonic() - began > 1.5:
            started.append(Receiver(port=port))

    new = webhooks.webhook_job(url=url, job_id=41, state="done", task_type="resize",
                               queue="default", finished_at=WHEN, result=None,
                               settings=fast.model_copy(update={"webhook_max_attempts": 500}))
    try:
        job = run(store, fast, registry, new, during=open_after_a_while)
    finally:
        for r in started:
            r.close()
    assert job.state is JobState.DONE and job.attempts > 1
    assert "ConnectError" in (job.attempt_log[0].error or "")
    assert len(started[0].requests) == 1
    check_signed(started[0].requests[0], job.id)


@pytest.mark.parametrize("status", [400, 404, 410, 302])
def test_other_answers_are_not_retried(store: SqlStore, fast: Settings, registry: TaskRegistry,
                                       status: int) -> None:
    receiver = Receiver(script=[status])
    try:
        job = deliver(store, fast, registry, receiver.url())
    finally:
        receiver.close()
    assert job.state is JobState.FAILED and job.attempts == 1
    assert len(receiver.requests) == 1  # and the redirect was not followed
    assert (job.last_error or "").startswith(f"WebhookRejected: {receiver.url()} answered "
                                             f"{status}: answer of the test.")


def test_a_slow_receiver_times_out_and_is_retried(store: SqlStore, fast: Settings,
                                                  registry: TaskRegistry) -> None:
    receiver = Receiver(script=[("sleep", 3)])
    try:
        job = deliver(store, fast.model_copy(update={"webhook_timeout_seconds": 0.5}),
                      registry, receiver.url())
    finally:
        receiver.close()
    assert job.state is JobState.DONE and job.attempts == 2
    assert "WebhookRetry" in (job.attempt_log[0].error or "")
    assert "0.5 s" in (job.attempt_log[0].error or "")


def test_a_private_address_is_refused_unless_allowed(store: SqlStore, fast: Settings,
                                                     registry: TaskRegistry,
                                                     receiver: Receiver) -> None:
    strict = fast.model_copy(update={"webhook_allow_private": False})
    job = deliver(store, strict, registry, receiver.url())
    named = deliver(store, strict, registry, receiver.url(host="localhost"))
    assert receiver.requests == []
    for j in (job, named):
        assert j.state is JobState.FAILED and j.attempts == 1
        assert (j.last_error or "").startswith("WebhookRefused: callback_url: ")
    assert "127.0.0.1 is a loopback address" in (job.last_error or "")


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names that resolve to the addresses given (others as usual)."""
    names: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in names:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM,
                     socket.IPPROTO_TCP, "", (a, int(port))) for a in names[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def test_a_name_is_resolved_checked_and_the_checked_address_connected_to(
        store: SqlStore, fast: Settings, registry: TaskRegistry, receiver: Receiver,
        fake_dns: dict[str, list[str]]) -> None:
    fake_dns["hooks.example.test"] = ["127.0.0.1"]
    fake_dns["rebound.example.test"] = ["93.184.215.14", "127.0.0.1"]
    strict = fast.model_copy(update={"webhook_allow_private": False})
    refused = deliver(store, strict, registry, receiver.url(host="hooks.example.test"))
    rebound = deliver(store, strict, registry, receiver.url(host="rebound.example.test"))
    assert receiver.requests == []
    assert refused.state is JobState.FAILED and refused.attempts == 1
    assert "hooks.example.test resolves to 127.0.0.1 is a loopback address" in (
        refused.last_error or "")
    assert rebound.state is JobState.FAILED and "resolves to 127.0.0.1" in (
        rebound.last_error or "")
    allowed = deliver(store, fast, registry, receiver.url(host="hooks.example.test"))
    assert allowed.state is JobState.DONE
    assert allowed.result == {"status": 200, "address": "127.0.0.1"}
    assert receiver.requests[0][1]["Host"] == f"hooks.example.test:{receiver.port}"


def test_a_payload_jobq_did_not_seal_is_never_sent(store: SqlStore, fast: Settings,
                                                   registry: TaskRegistry,
                                                   receiver: Receiver) -> None:
    forged = {"url": receiver.url(), "body": {"job_id": 41, "state": "done"}}
    unsealed = run(store, fast, registry, NewJob("jobq.webhook", forged, max_attempts=5))
    resealed = run(store, fast, registry, NewJob("jobq.webhook", {**forged, "seal": "0" * 64},
                                                 max_attempts=5))
    assert receiver.requests == []
    for j in (unsealed, resealed):
        assert j.state is JobState.FAILED and j.attempts == 1
        assert (j.last_error or "").startswith("WebhookRefused: ")


def test_a_worker_without_a_secret_retries(store: SqlStore, fast: Settings,
                                           registry: TaskRegistry, receiver: Receiver) -> None:
    new = webhooks.webhook_job(url=receiver.url(), job_id=41, state="done", task_type="t",
                               queue="default", finished_at=WHEN, settings=fast)
    new = dataclasses.replace(new, max_attempts=2)
    job = run(store, fast.model_copy(update={"webhook_secret": None}), registry, new)
    assert job.state is JobState.FAILED and job.attempts == 2  # retried, not discarded
    assert "has no JOBQ_WEBHOOK_SECRET" in (job.last_error or "")
    assert receiver.requests == []


def certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` and its key."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("served_name", ["hooks.example.test", "other.example.test"])
def test_https_checks_the_certificate_against_the_name_not_the_address(
        store: SqlStore, fast: Settings, registry: TaskRegistry, tmp_path: Path,
        fake_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch,
        served_name: str) -> None:
    fake_dns["hooks.example.test"] = ["127.0.0.1"]
    cert, key = certificate(tmp_path, served_name)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(webhooks, "_tls_verify", lambda: client_tls)
    receiver = Receiver(tls=server_tls)
    try:
        job = deliver(store, fast, registry,
                      f"https://hooks.example.test:{receiver.port}/hook", max_attempts=1)
    finally:
        receiver.close()
    if served_name == "hooks.example.test":  # connected to 127.0.0.1, verified as the name
        assert job.state is JobState.DONE, job.last_error
        assert job.result == {"status": 200, "address": "127.0.0.1"}
        check_signed(receiver.requests[0], job.id)
    else:  # a certificate for another name is refused (and retried: it may be fixed)
        assert job.state is JobState.FAILED and receiver.requests == []
        assert "WebhookRetry" in (job.last_error or "")
        assert "CERTIFICATE_VERIFY_FAILED" in (job.last_error or ""), job.last_error


def test_a_job_with_a_callback_url_is_delivered_after_the_receiver_was_down_for_10_s(
        store: SqlStore, fast: Settings, registry: TaskRegistry) -> None:
    """The whole path: the job runs, its completion enqueues the delivery in the same
    transaction, and the delivery retries until the receiver is up, 10 s later."""
    settings = fast.model_copy(update={"webhook_max_attempts": 1000})
    store.settings = settings  # the completing store seals with the secret
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    ok = store.enqueue(NewJob("echo", {"n": 1}, callback_url=url)).job
    bad = store.enqueue(NewJob("fail", 2, max_attempts=1, callback_url=url)).job
    began = time.monotonic()
    started: list[Receiver] = []

    def open_after_10_s() -> None:
        if not started and time.monotonic() - began > 10:
            started.append(Receiver(port=port))

    def delivered() -> bool:
        return bool(started) and len(started[0].requests) >= 2 and all(
            j.state.is_final for j in store.list_jobs(task_type="jobq.webhook", limit=10).items)

    try:
        serve(store, settings, registry, delivered, lambda _worker: open_after_10_s(), limit=60)
    finally:
        for r in started:
            r.close()
    deliveries = store.list_jobs(task_type="jobq.webhook", limit=10).items
    assert len(deliveries) == 2 and all(d.state is JobState.DONE for d in deliveries)
    assert all(d.attempts > 1 for d in deliveries)  # refused while the receiver was down
    bodies = {}
    for path, headers, body in started[0].requests:
        assert webhooks.verify(SECRET, headers["X-Jobq-Signature"], body)
        got = json.loads(body)
        bodies[got["job_id"]] = got
    assert len(started[0].requests) == 2  # once each
    assert bodies[ok.id]["state"] == "done" and bodies[ok.id]["result"] == {"n": 1}
    assert bodies[bad.id]["state"] == "failed" and "DemoFailure" in bodies[bad.id]["error"]
