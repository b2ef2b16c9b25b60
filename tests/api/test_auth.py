"""API keys: the HTTP API's authentication, scopes, queue isolation, open mode and rate limit,
and the `jobq keys` CLI. On every backend, through a real uvicorn server and real HTTP.

Nothing is mocked. One test swaps ``hmac.compare_digest`` for a spy that calls the real one, to
see that the constant-time comparison is what decides. The open-mode refusal is tested twice:
over real HTTP against a server bound to a non-loopback address of this machine (skipped when
it has none), and through the ASGI app with a crafted server address (httpx.ASGITransport).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import delete, select

from jobq.api import create_app
from jobq.api.auth import RateLimiter, is_loopback
from jobq.errors import InvalidKeySpec, KeyNotFound, Unauthorized
from jobq.keys import ApiKey, NewKey, hash_secret, parse_token
from jobq.schedules import make_schedule
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.store.tables import api_keys
from jobq.types import JobState
from jobq.harness import free_port, wait_for
from procs import Procs, env_for
from test_api import problem

CHALLENGE = 'Bearer realm="jobq"'
INVALID_CHALLENGE = 'Bearer realm="jobq", error="invalid_token"'


# -- fixtures and helpers ---------------------------------------------------------------------


def _delete_keys(store: SqlStore) -> None:
    # The PostgreSQL session database is shared by all tests and the shared fixtures only
    # empty the job tables: a key left behind would close the API for every later test.
    with store.engine.begin() as conn:
        conn.execute(delete(api_keys))


@pytest.fixture
def svc(service: JobService, store: SqlStore) -> Iterator[JobService]:
    """The service, on a database without keys before and after the test."""
    _delete_keys(store)
    yield service
    _delete_keys(store)


def tuned(settings: Settings, **overrides: Any) -> Settings:
    return load_settings(**{**settings.model_dump(), **overrides})


@contextmanager
def serve_on(app: FastAPI, host: str = "127.0.0.1") -> Iterator[httpx.Client]:
    """Run ``app`` under uvicorn on a free port of ``host`` in a thread; yield a client."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5,
                       http="jobq.api.protocol:HttpProtocol")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    netloc = f"[{host}]" if family == socket.AF_INET6 else host
    try:
        with httpx.Client(base_url=f"http://{netloc}:{port}", timeout=15, trust_env=False) as c:
            yield c
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "the API server did not stop"


@pytest.fixture
def api(settings: Settings, svc: JobService) -> Iterator[httpx.Client]:
    """A server that reads keys afresh on every request, so tests may add keys after it starts
    (the tests of the cache bound start their own servers), and that does not limit failed
    authentications, which some tests make dozens of (the limit's tests start their own)."""
    app = create_app(settings=tuned(settings, api_key_cache_seconds=0,
                                    auth_failures_per_second=0))
    with serve_on(app) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_key(svc: JobService, queues: list[str], scopes: list[str], name: str = "t") -> str:
    return svc.create_key(name, queues, scopes)[1]


def job_in(svc: JobService, queue: str, task: str = "echo") -> int:
    return svc.enqueue(task, {"q": queue}, queue=queue).job.id


def failed_job_in(svc: JobService, queue: str) -> int:
    """A job of ``queue`` that can be retried (cancelled, so failed | cancelled → pending)."""
    job_id = job_in(svc, queue)
    svc.cancel(job_id)
    return job_id


def non_loopback_ipv4() -> str | None:
    """An address of this machine that is not loopback, or None."""
    candidates = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # UDP: no packet is sent; picks the outbound address
            candidates.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        candidates += [ai[4][0] for ai in socket.getaddrinfo(socket.gethostname(), None,
                                                             socket.AF_INET)]
    except OSError:
        pass
    for ip in candidates:
        if not ipaddress.ip_address(ip).is_loopback:
            try:
                with socket.socket() as s:
                    s.bind((ip, 0))
                return str(ip)
            except OSError:
                continue
    return None


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/jobs", {}),
    ("GET", "/jobs/1", {}),
    ("POST", "/jobs", {"json": {"task_type": "echo"}}),
    ("POST", "/jobs/1/cancel", {}),
    ("POST", "/jobs/1/retry", {}),
    ("GET", "/stats", {}),
    ("GET", "/schedules", {}),
    ("GET", "/queues", {}),
    ("POST", "/queues/default/pause", {}),
    ("POST", "/queues/default/resume", {}),
]


# -- keys in the store: hashes only, constant-time compare ------------------------------------


def test_token_is_printed_once_and_only_its_hash_is_stored(
    svc: JobService, store: SqlStore, settings: Settings
) -> None:
    key, token = svc.create_key("billing", ["emails", "emails", "reports"], ["read", "admin"])
    parsed = parse_token(token)
    assert parsed is not None and str(parsed) == token
    assert token.startswith(f"jobq_{key.prefix}_")
    assert len(parsed.secret) == 43  # 32 random bytes, URL-safe base64
    assert key.queues == ("emails", "reports") and key.scopes == ("read", "admin")
    assert key.active and key.last_used_at is None

    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(api_keys))]
    assert len(rows) == 1
    row = rows[0]
    assert row["secret_hash"] == hashlib.sha256(parsed.secret.encode()).hexdigest()
    assert row["prefix"] == key.prefix
    dumped = json.dumps(rows, default=str)
    assert parsed.secret not in dumped and token not in dumped
    if settings.is_sqlite:  # nothing of the secret anywhere in the database's files
        db = Path(settings.database_url.removeprefix("sqlite:///"))
        for f in db.parent.glob(db.name + "*"):
            assert parsed.secret.encode() not in f.read_bytes(), f
    # Another key gets another prefix and secret; both are listed, without secrets.
    other, other_token = svc.create_key("ci", ["*"], ["enqueue"])
    assert other.prefix != key.prefix and other_token != token
    listed = svc.list_keys()
    assert [k.prefix for k in listed] == [key.prefix, other.prefix]
    assert all(parsed.secret not in repr(k) for k in listed)


def test_revoke_is_idempotent_and_unknown_prefix_is_an_error(svc: JobService) -> None:
    assert not svc.keys_configured()
    key, token = svc.create_key("k", ["a"], ["read"])
    assert svc.keys_configured()
    revoked = svc.revoke_key(key.prefix)
    assert revoked.revoked_at is not None and not revoked.active
    again = svc.revoke_key(token)  # a whole token names its key too
    assert again.revoked_at == revoked.revoked_at
    assert not svc.keys_configured()
    with pytest.raises(KeyNotFound):
        svc.revoke_key("0123456789ab")
    assert svc.find_key(key.prefix) == again


@pytest.mark.parametrize(
    ("name", "queues", "scopes", "why"),
    [
        ("", ["a"], ["read"], "name"),
        (" padded", ["a"], ["read"], "name"),
        ("x" * 129, ["a"], ["read"], "name"),
        ("tab\there", ["a"], ["read"], "name"),
        ("k", [], ["read"], "queue"),
        ("k", ["*", "a"], ["read"], "'*'"),
        ("k", ["bad queue"], ["read"], "queue name"),
        ("k", ["a"], [], "scope"),
        ("k", ["a"], ["read", "root"], "'root'"),
    ],
)
def test_new_key_is_checked(name: str, queues: list[str], scopes: list[str], why: str) -> None:
    with pytest.raises(InvalidKeySpec, match=why):
        NewKey(name, tuple(queues), tuple(scopes))


def test_scopes_imply_only_what_they_say() -> None:
    def key(*scopes: str) -> ApiKey:
        return ApiKey(1, "k", "0" * 12, ("a",), scopes, None, None, None, "")  # type: ignore[arg-type]

    assert {s for s in ("enqueue", "read", "admin") if key("admin").grants(s)} == {
        "enqueue", "read", "admin"}
    assert {s for s in ("enqueue", "read", "admin") if key("read").grants(s)} == {"read"}
    assert {s for s in ("enqueue", "read", "admin") if key("enqueue").grants(s)} == {"enqueue"}
    assert key("read").sees("a") and not key("read").sees("b")


def test_tokens_must_have_the_exact_shape() -> None:
    good = "jobq_0123456789ab_" + "A" * 43
    assert parse_token(good) is not None
    for bad in ("", "jobq_", good + "x", good[:-1], good.replace("jobq_", "JOBQ_"),
                "jobq_0123456789AB_" + "A" * 43, good + "\n", " " + good):
        assert parse_token(bad) is None, bad


def test_hashes_are_compared_with_hmac_compare_digest(
    settings: Settings, svc: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, token = svc.create_key("k", ["*"], ["read"])
    secret = token.split("_", 2)[2]
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with serve_on(create_app(settings=settings)) as client:
        assert client.get("/jobs", headers=bearer(token)).status_code == 200
        assert calls == [(hash_secret(secret), key.secret_hash)]
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        problem(client.get("/jobs", headers=bearer(forged)), 401)
        assert len(calls) == 2 and calls[1][1] == key.secret_hash
        assert calls[1][0] != key.secret_hash


# -- 401 ----------------------------------------------------------------------------------------


def test_without_a_valid_token_every_route_is_401_with_a_challenge(
    api: httpx.Client, svc: JobService
) -> None:
    token = make_key(svc, ["*"], ["admin"])
    revoked_key, revoked = svc.create_key("old", ["*"], ["admin"])
    svc.revoke_key(revoked_key.prefix)
    wrong_secret = token[:-1] + ("A" if token[-1] != "A" else "B")
    unknown_prefix = "jobq_" + "f" * 12 + token[17:]
    for method, path, kw in ROUTES:
        p = problem(api.request(method, path, **kw), 401, "urn:jobq:problem:unauthorized")
        assert "Bearer" in p["detail"]
        assert api.request(method, path, **kw).headers["www-authenticate"] == CHALLENGE
        for bad in (wrong_secret, unknown_prefix, revoked, "nonsense", token + "x"):
            resp = api.request(method, path, headers=bearer(bad), **kw)
            problem(resp, 401, "urn:jobq:problem:unauthorized")
            assert resp.headers["www-authenticate"] == INVALID_CHALLENGE
        resp = api.request(method, path, headers={"Authorization": f"Basic {token}"}, **kw)
        problem(resp, 401)
        assert resp.headers["www-authenticate"].startswith(CHALLENGE)
    assert api.get("/jobs", headers=bearer(token)).status_code == 200
    assert api.get("/jobs", headers={"authorization": f"bearer {token}"}).status_code == 200
    assert svc.list_jobs().items == []  # nothing was enqueued by the refused POSTs


def test_health_and_docs_stay_open(api: httpx.Client, svc: JobService) -> None:
    make_key(svc, ["*"], ["admin"])
    assert api.get("/healthz").status_code == 200
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= next(iter(schemes.values())).items()
    assert "401" in spec["paths"]["/jobs"]["get"]["responses"]
    # The key is optional API-wide (none is needed in open mode); /healthz never needs one.
    assert spec["security"] == [{next(iter(schemes)): []}, {}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []


# -- 403: scopes ----------------------------------------------------------------------------


def test_scopes_403_and_cancel_retry_need_admin(api: httpx.Client, svc: JobService) -> None:
    reader = make_key(svc, ["*"], ["read"])
    enqueuer = make_key(svc, ["*"], ["enqueue"])
    both = make_key(svc, ["*"], ["read", "enqueue"])
    admin = make_key(svc, ["*"], ["admin"])
    pending = job_in(svc, "default")
    cancelled = failed_job_in(svc, "default")

    def forbidden(resp: httpx.Response, scope: str) -> None:
        p = problem(resp, 403, "urn:jobq:problem:forbidden")
        assert p["required_scope"] == scope and scope in p["detail"]

    forbidden(api.post("/jobs", json={"task_type": "echo"}, headers=bearer(reader)), "enqueue")
    for path in ("/jobs", f"/jobs/{pending}", "/stats", "/schedules"):
        forbidden(api.get(path, headers=bearer(enqueuer)), "read")
        assert api.get(path, headers=bearer(reader)).status_code == 200
    assert api.post("/jobs", json={"task_type": "echo"}, headers=bearer(enqueuer)).status_code \
        == 201
    for token in (reader, enqueuer, both):
        forbidden(api.post(f"/jobs/{pending}/cancel", headers=bearer(token)), "admin")
        forbidden(api.post(f"/jobs/{cancelled}/retry", headers=bearer(token)), "admin")
        # A scope is checked before the job is looked up: no hint whether it exists.
        forbidden(api.post("/jobs/999999/cancel", headers=bearer(token)), "admin")
    assert svc.get(pending).state is JobState.PENDING
    assert svc.get(cancelled).state is JobState.CANCELLED

    # admin implies read and enqueue.
    assert api.post(f"/jobs/{pending}/cancel", headers=bearer(admin)).json()["state"] == \
        "cancelled"
    assert api.post(f"/jobs/{cancelled}/retry", headers=bearer(admin)).json()["state"] == \
        "pending"
    assert api.get(f"/jobs/{pending}", headers=bearer(admin)).status_code == 200
    assert api.post("/jobs", json={"task_type": "echo"}, headers=bearer(admin)).status_code \
        == 201


def test_queues_list_needs_read_and_pause_resume_need_admin_in_the_keys_queues(
        api: httpx.Client, svc: JobService) -> None:
    reader = make_key(svc, ["*"], ["read"])
    enqueuer = make_key(svc, ["*"], ["enqueue"])
    admin_a = make_key(svc, ["a"], ["admin"])
    job_in(svc, "a")
    job_in(svc, "b")
    for token in (reader, enqueuer):
        assert problem(api.post("/queues/a/pause", headers=bearer(token)), 403,
                       "urn:jobq:problem:forbidden")["required_scope"] == "admin"
    assert problem(api.get("/queues", headers=bearer(enqueuer)), 403,
                   "urn:jobq:problem:forbidden")["required_scope"] == "read"
    listed = api.get("/queues", headers=bearer(reader)).json()["queues"]
    assert [q["name"] for q in listed] == ["a", "b"]
    # Outside its queues, a queue does not exist for a key.
    problem(api.post("/queues/b/pause", headers=bearer(admin_a)), 404,
            "urn:jobq:problem:queue-not-found")
    paused = api.post("/queues/a/pause", headers=bearer(admin_a))
    assert paused.status_code == 200 and paused.json()["paused"] is True
    mine = api.get("/queues", headers=bearer(admin_a)).json()["queues"]
    assert [(q["name"], q["paused"]) for q in mine] == [("a", True)]
    assert not {q.name: q for q in svc.list_queues()}["b"].paused
    resumed = api.post("/queues/a/resume", headers=bearer(admin_a)).json()
    assert resumed["paused"] is False and resumed["paused_at"] is None


# -- 404: queues outside the key ----------------------------------------------------------


def test_a_job_in_another_queue_is_404_on_every_route(
    api: httpx.Client, svc: JobService
) -> None:
    token = make_key(svc, ["mine"], ["admin"])
    theirs = job_in(svc, "theirs")
    theirs_cancelled = failed_job_in(svc, "theirs")
    mine = job_in(svc, "mine")
    missing = 10**9

    def not_found(resp: httpx.Response, job_id: int) -> dict[str, Any]:
        p = problem(resp, 404, "urn:jobq:problem:job-not-found")
        assert p["job_id"] == job_id
        return {k: (str(v).replace(str(job_id), "N")) for k, v in p.items()}

    auth = bearer(token)
    for route in ("", "/cancel", "/retry"):
        method = "GET" if route == "" else "POST"
        # Another queue's job looks exactly like a job that does not exist.
        hidden = not_found(api.request(method, f"/jobs/{theirs}{route}", headers=auth), theirs)
        absent = not_found(api.request(method, f"/jobs/{missing}{route}", headers=auth),
                           missing)
        assert hidden == absent
    problem(api.post(f"/jobs/{theirs_cancelled}/retry", headers=auth), 404)
    assert svc.get(theirs).state is JobState.PENDING
    assert svc.get(theirs_cancelled).state is JobState.CANCELLED

    assert api.get(f"/jobs/{mine}", headers=auth).json()["queue"] == "mine"
    assert api.post(f"/jobs/{mine}/cancel", headers=auth).json()["state"] == "cancelled"
    assert api.post(f"/jobs/{mine}/retry", headers=auth).json()["state"] == "pending"


def test_a_queue_outside_the_key_is_404_for_submit_and_list(
    api: httpx.Client, svc: JobService
) -> None:
    token = make_key(svc, ["mine"], ["read", "enqueue"])
    auth = bearer(token)
    for resp in (
        api.post("/jobs", json={"task_type": "echo", "queue": "theirs"}, headers=auth),
        api.post("/jobs?task_type=echo&queue=theirs", headers=auth),
        api.get("/jobs", params={"queue": "theirs"}, headers=auth),
        api.get("/jobs", params={"queue": "nobody-uses-this"}, headers=auth),
    ):
        p = problem(resp, 404, "urn:jobq:problem:queue-not-found")
        assert p["queue"] in {"theirs", "nobody-uses-this"}
    assert svc.list_jobs().items == []
    created = api.post("/jobs", json={"task_type": "echo", "queue": "mine"}, headers=auth)
    assert created.status_code == 201
    listed = api.get("/jobs", params={"queue": "mine"}, headers=auth).json()["items"]
    assert [j["id"] for j in listed] == [created.json()["id"]]


def test_list_shows_only_the_keys_queues_across_pages(
    api: httpx.Client, svc: JobService
) -> None:
    token = make_key(svc, ["a", "c"], ["read"])
    everything = make_key(svc, ["*"], ["read"])
    ids = {q: [job_in(svc, q) for _ in range(3)] for q in ("a", "b", "c")}
    for q in ("a", "b", "c"):
        svc.cancel(ids[q][0])

    def listed(auth: dict[str, str], **params: Any) -> list[int]:
        out, cursor = [], None
        while True:
            query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = api.get("/jobs", params=query, headers=auth)
            assert page.status_code == 200, page.text
            out += [j["id"] for j in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return out

    assert listed(bearer(token)) == sorted(ids["a"] + ids["c"], reverse=True)
    assert listed(bearer(token), state="cancelled") == sorted(
        [ids["a"][0], ids["c"][0]], reverse=True)
    assert listed(bearer(token), queue="c") == sorted(ids["c"], reverse=True)
    assert listed(bearer(token), task_type="noop") == []
    assert len(listed(bearer(everything))) == 9


def test_stats_show_only_the_keys_queues(api: httpx.Client, svc: JobService) -> None:
    token = make_key(svc, ["a", "empty"], ["read"])
    for q, n in (("a", 2), ("b", 3)):
        for _ in range(n):
            job_in(svc, q)
    svc.store.register_worker("w-ab", "host", 1, ["a", "b"], 4)
    svc.store.register_worker("w-b", "host", 2, ["b"], 4)

    mine = api.get("/stats", headers=bearer(token)).json()
    assert set(mine["queues"]) == {"a", "empty"}
    assert mine["queues"]["a"]["pending"] == 2 and mine["queues"]["empty"]["pending"] == 0
    assert mine["jobs"]["pending"] == 2
    assert [(w["id"], w["queues"]) for w in mine["workers"]] == [("w-ab", ["a"])]
    assert mine["oldest_pending_age_seconds"] is not None

    everything = api.get("/stats", headers=bearer(make_key(svc, ["*"], ["read"]))).json()
    assert set(everything["queues"]) == {"a", "b"} and everything["jobs"]["pending"] == 5
    assert {w["id"] for w in everything["workers"]} == {"w-ab", "w-b"}


def test_schedules_show_only_the_keys_queues(api: httpx.Client, svc: JobService) -> None:
    svc.store.declare_schedules([make_schedule("echo", 60, name="in-a", queue="a"),
                                 make_schedule("echo", 60, name="in-b", queue="b")])
    mine = api.get("/schedules", headers=bearer(make_key(svc, ["a"], ["read"]))).json()
    assert [s["name"] for s in mine["schedules"]] == ["in-a"]
    every = api.get("/schedules", headers=bearer(make_key(svc, ["*"], ["read"]))).json()
    assert [s["name"] for s in every["schedules"]] == ["in-a", "in-b"]


def test_idempotency_keys_of_other_queues_can_neither_be_taken_nor_seen(
    api: httpx.Client, svc: JobService
) -> None:
    theirs = svc.enqueue("echo", 1, queue="theirs", idempotency_key="order-abc").job
    mine = make_key(svc, ["mine"], ["enqueue"])
    body = {"task_type": "echo", "payload": 2, "queue": "mine", "idempotency_key": "order-abc"}
    made = api.post("/jobs", json=body, headers=bearer(mine))
    assert made.status_code == 201, made.text  # a new job: the key is free in this queue
    assert made.json()["id"] != theirs.id and made.json()["queue"] == "mine"
    again = api.post("/jobs", json=body, headers=bearer(mine))
    assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
    changed = {**body, "payload": 3}
    p = problem(api.post("/jobs", json=changed, headers=bearer(mine)), 409,
                "urn:jobq:problem:idempotency-conflict")
    assert p["job_id"] == made.json()["id"]
    assert svc.get(theirs.id).payload == 1


def test_batch_follows_the_rules_of_post_jobs_for_every_item(
    api: httpx.Client, svc: JobService
) -> None:
    theirs = svc.enqueue("echo", 1, queue="theirs", idempotency_key="order-abc").job
    reader = make_key(svc, ["*"], ["read"])
    mine = make_key(svc, ["mine", "also-mine"], ["enqueue"])
    everything = make_key(svc, ["*"], ["admin"])
    ok = [{"task_type": "echo", "queue": "mine"}, {"task_type": "echo", "queue": "also-mine"}]

    p = problem(api.post("/jobs/batch", json={"jobs": ok}), 401)
    p = problem(api.post("/jobs/batch", json={"jobs": ok}, headers=bearer(reader)), 403,
                "urn:jobq:problem:forbidden")
    assert p["required_scope"] == "enqueue"
    # One item outside the key's queues: that queue does not exist for it, nothing is stored.
    outside = [*ok, {"task_type": "echo", "queue": "theirs"}]
    p = problem(api.post("/jobs/batch", json={"jobs": outside}, headers=bearer(mine)), 404,
                "urn:jobq:problem:queue-not-found")
    assert (p["queue"], p["index"]) == ("theirs", 2)
    # A key another queue holds is free in this one.
    keyed = [*ok, {"task_type": "echo", "payload": 2, "queue": "mine",
                   "idempotency_key": "order-abc"}]
    made = api.post("/jobs/batch", json={"jobs": keyed}, headers=bearer(mine))
    assert made.status_code == 201, made.text
    assert [j["queue"] for j in made.json()["jobs"]] == ["mine", "also-mine", "mine"]
    assert theirs.id not in [j["id"] for j in made.json()["jobs"]]
    made = api.post("/jobs/batch", json={"jobs": outside}, headers=bearer(everything))
    assert made.status_code == 201, made.text
    assert len(svc.list_jobs().items) == 1 + 3 + 3


# -- revocation and new keys take effect within the cache bound ------------------------------


def _seconds_until(client: httpx.Client, status: int, headers: dict[str, str],
                   limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if client.get("/jobs", headers=headers).status_code == status:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"no {status} within {limit}s")


def test_revocation_takes_effect_within_the_cache_bound(
    settings: Settings, svc: JobService
) -> None:
    ttl = 1.0
    key, token = svc.create_key("k", ["*"], ["read"])
    keep = make_key(svc, ["*"], ["read"])
    with serve_on(create_app(settings=tuned(settings, api_key_cache_seconds=ttl))) as client:
        assert client.get("/jobs", headers=bearer(token)).status_code == 200
        svc.revoke_key(key.prefix)
        took = _seconds_until(client, 401, bearer(token), limit=10)
        assert took <= ttl + 1.0, took
        resp = client.get("/jobs", headers=bearer(token))
        assert resp.headers["www-authenticate"] == INVALID_CHALLENGE
        assert client.get("/jobs", headers=bearer(keep)).status_code == 200


def test_the_first_key_closes_an_open_api_within_the_cache_bound(
    settings: Settings, svc: JobService
) -> None:
    ttl = 1.0
    with serve_on(create_app(settings=tuned(settings, api_key_cache_seconds=ttl))) as client:
        assert client.get("/jobs").status_code == 200  # open
        token = make_key(svc, ["*"], ["read"])
        took = _seconds_until(client, 401, {}, limit=10)
        assert took <= ttl + 1.0, took
        assert client.get("/jobs", headers=bearer(token)).status_code == 200


def test_last_use_is_recorded(api: httpx.Client, svc: JobService) -> None:
    key, token = svc.create_key("k", ["*"], ["read"])
    assert api.get("/jobs", headers=bearer(token)).status_code == 200
    used = svc.find_key(key.prefix)
    assert used is not None and used.last_used_at is not None
    assert used.last_used_at >= used.created_at


# -- open mode --------------------------------------------------------------------------------


def test_open_mode_allows_everything_on_loopback_and_says_so_at_start(
    settings: Settings, svc: JobService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobq.api")
    with serve_on(create_app(settings=settings)) as client:
        assert any("API is OPEN" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records), caplog.text
        job = client.post("/jobs", json={"task_type": "echo"})
        assert job.status_code == 201
        job_id = job.json()["id"]
        assert client.get(f"/jobs/{job_id}").status_code == 200
        assert client.get("/jobs", headers=bearer("ignored in open mode")).status_code == 200
        assert client.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"
        assert client.post(f"/jobs/{job_id}/retry").json()["state"] == "pending"
        assert client.get("/stats").status_code == 200


def test_with_keys_the_start_says_keys_are_required(
    settings: Settings, svc: JobService, caplog: pytest.LogCaptureFixture
) -> None:
    make_key(svc, ["*"], ["read"])
    caplog.set_level(logging.INFO, logger="jobq.api")
    with serve_on(create_app(settings=settings)):
        pass
    messages = [r.getMessage() for r in caplog.records]
    assert any("API keys are required" in m for m in messages), messages
    assert not any("OPEN" in m for m in messages), messages


def test_open_mode_refuses_a_non_loopback_address_over_real_http(
    settings: Settings, svc: JobService
) -> None:
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to bind")
    with serve_on(create_app(settings=settings), host=ip) as client:
        for path in ("/jobs", "/healthz", "/docs", "/stats"):
            p = problem(client.get(path), 403, "urn:jobq:problem:open-api-not-local")
            assert "JOBQ_ALLOW_OPEN_API" in p["detail"]
        problem(client.post("/jobs", json={"task_type": "echo"}), 403)
        assert svc.list_jobs().items == []
    with serve_on(create_app(settings=tuned(settings, allow_open_api=True)), host=ip) as client:
        assert client.get("/jobs").status_code == 200
    # With a key the API is not open: the usual rules apply on any address.
    token = make_key(svc, ["*"], ["read"])
    with serve_on(create_app(settings=settings), host=ip) as client:
        problem(client.get("/jobs"), 401)
        assert client.get("/jobs", headers=bearer(token)).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_open_mode_refuses_a_non_loopback_server_address_in_the_asgi_scope(
    settings: Settings, svc: JobService
) -> None:
    """The same rule without a network: httpx.ASGITransport puts the URL's host and port in
    the ASGI scope's ``server``, so the app sees the address a request arrived at."""

    async def statuses(app: FastAPI, bases: list[str]) -> list[int]:
        out = []
        async with app.router.lifespan_context(app):
            for base in bases:
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url=base
                ) as client:
                    out.append((await client.get("/jobs")).status_code)
        return out

    bases = ["http://127.0.0.1:8000", "http://[::1]:8000", "http://localhost",
             "http://127.9.9.9", "http://10.1.2.3:8000", "http://[2001:db8::1]",
             "http://api.example.com", "http://0.0.0.0"]
    expected_open = [200, 200, 200, 200, 403, 403, 403, 403]
    settings = tuned(settings, allowed_hosts=["*"])  # the Host rule is another test's
    assert asyncio.run(statuses(create_app(settings=settings), bases)) == expected_open
    allowed = tuned(settings, allow_open_api=True)
    assert asyncio.run(statuses(create_app(settings=allowed), bases)) == [200] * len(bases)
    make_key(svc, ["*"], ["read"])
    assert asyncio.run(statuses(create_app(settings=settings), bases)) == [401] * len(bases)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
     ("::ffff:127.0.0.1", True), ("localhost", True), ("LOCALHOST", True),
     ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("example.com", False),
     ("", False), (None, False), ("/run/jobq.sock", False)],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- jobq api / jobq up refuse an open API on a public address --------------------------------


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobq", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_serve_api_refuses_a_public_address_without_keys(
    db_url: str, svc: JobService, tmp_path: Path
) -> None:
    env = env_for(db_url)
    for args in (["api", "--host", "0.0.0.0"], ["up", "--workers", "0", "--host", "0.0.0.0"]):
        out = _run([*args, "--port", str(free_port())], env)
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert "JOBQ_ALLOW_OPEN_API" in out.stderr and "0.0.0.0" in out.stderr
        assert "Traceback" not in out.stderr

    procs = Procs(tmp_path)
    try:
        # Allowed explicitly: it starts, and says that it is open.
        port = free_port()
        proc = procs.start([sys.executable, "-m", "jobq", "api", "--host", "0.0.0.0",
                            "--port", str(port)],
                           env_for(db_url, JOBQ_ALLOW_OPEN_API="true"), "open")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(base), 30, "the open API")
        assert httpx.get(f"{base}/jobs", timeout=5).status_code == 200
        proc.terminate()
        proc.wait(30)
        assert "OPEN" in procs.logs() and "JOBQ_ALLOW_OPEN_API=true" in procs.logs()

        # With a key there is nothing to refuse.
        token = make_key(svc, ["*"], ["read"])
        port = free_port()
        proc = procs.start([sys.executable, "-m", "jobq", "api", "--host", "0.0.0.0",
                            "--port", str(port)], env, "keyed")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(base), 30, "the keyed API")
        assert httpx.get(f"{base}/jobs", timeout=5).status_code == 401
        assert httpx.get(f"{base}/jobs", headers=bearer(token), timeout=5).status_code == 200
    finally:
        procs.stop_all()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- rate limit -------------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after_per_key(settings: Settings, svc: JobService) -> None:
    limited = tuned(settings, rate_limit_per_second=0.5, rate_limit_burst=3)
    first = make_key(svc, ["*"], ["read"])
    second = make_key(svc, ["*"], ["read"])
    with serve_on(create_app(settings=limited)) as client:
        codes = [client.get("/jobs", headers=bearer(first)).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        resp = client.get("/jobs", headers=bearer(first))
        p = problem(resp, 429, "urn:jobq:problem:rate-limited")
        retry_after = resp.headers["retry-after"]
        assert retry_after.isdigit() and 1 <= int(retry_after) <= 2, retry_after
        assert retry_after in p["detail"]
        # Another key has its own bucket; health checks are never limited.
        assert client.get("/jobs", headers=bearer(second)).status_code == 200
        assert all(client.get("/healthz").status_code == 200 for _ in range(5))
        time.sleep(int(retry_after))
        assert client.get("/jobs", headers=bearer(first)).status_code == 200


def test_no_rate_limit_in_open_mode_or_when_turned_off(
    settings: Settings, svc: JobService
) -> None:
    with serve_on(create_app(settings=tuned(settings, rate_limit_per_second=0.1,
                                            rate_limit_burst=1))) as client:
        assert [client.get("/jobs").status_code for _ in range(5)] == [200] * 5
    token = make_key(svc, ["*"], ["read"])
    with serve_on(create_app(settings=tuned(settings, rate_limit_per_second=0,
                                            rate_limit_burst=1))) as client:
        assert [client.get("/jobs", headers=bearer(token)).status_code
                for _ in range(5)] == [200] * 5


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = RateLimiter(per_second=2, burst=4, clock=lambda: now[0])
    assert [bucket.take(1) for _ in range(4)] == [None] * 4
    assert bucket.take(1) == 1  # half a second until one token
    assert bucket.take(2) is None  # another key, another bucket
    now[0] += 0.5
    assert bucket.take(1) is None and bucket.take(1) == 1
    now[0] += 100  # refills to the burst, not beyond
    assert [bucket.take(1) for _ in range(5)] == [None] * 4 + [1]
    slow = RateLimiter(per_second=0.25, burst=1, clock=lambda: now[0])
    assert slow.take(1) is None and slow.take(1) == 4
    assert RateLimiter(per_second=0, burst=1).take(1) is None


# -- jobq keys ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_jobq_keys_create_list_revoke(
    db_url: str, settings: Settings, svc: JobService
) -> None:
    env = env_for(db_url)
    created = _run(["keys", "create", "--name", "ci deploy", "--queue", "emails",
                    "--queue", "reports", "--scope", "read", "--scope", "enqueue"], env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout == token + "\n"  # stdout is the token alone, for scripts
    parsed = parse_token(token)
    assert parsed is not None
    assert parsed.prefix in created.stderr and "only now" in created.stderr
    assert parsed.secret not in created.stderr

    listed = _run(["keys", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert parsed.secret not in listed.stdout
    (entry,) = json.loads(listed.stdout)
    assert entry["prefix"] == parsed.prefix and entry["name"] == "ci deploy"
    assert entry["queues"] == ["emails", "reports"] and entry["scopes"] == ["enqueue", "read"]
    assert entry["revoked_at"] is None
    table = _run(["keys", "list"], env)
    assert table.returncode == 0 and parsed.prefix in table.stdout
    assert parsed.secret not in table.stdout

    fast = tuned(settings, api_key_cache_seconds=0.5)
    with serve_on(create_app(settings=fast)) as client:
        assert client.get("/jobs", headers=bearer(token)).status_code == 200
        problem(client.get("/jobs", params={"queue": "other"}, headers=bearer(token)), 404)
        revoked = _run(["keys", "revoke", parsed.prefix], env)
        assert revoked.returncode == 0, revoked.stderr
        assert f"revoked API key {parsed.prefix}" in revoked.stdout
        assert "open again" in revoked.stderr  # the last key is gone
        _seconds_until(client, 200, {}, limit=5)  # open again, on loopback
        assert client.get("/jobs", headers=bearer(token)).status_code == 200
        make_key(svc, ["*"], ["read"])
        _seconds_until(client, 401, bearer(token), limit=5)

    (entry,) = [e for e in json.loads(_run(["keys", "list", "--json"], env).stdout)
                if e["prefix"] == parsed.prefix]
    assert entry["revoked_at"] is not None and entry["last_used_at"] is not None

    for args, message in (
        (["keys", "revoke", "0123456789ab"], "no API key"),
        (["keys", "create", "--name", "x", "--queue", "a", "--scope", "root"], "'root'"),
        (["keys", "create", "--name", "x", "--queue", "*", "--queue", "a", "--scope", "read"],
         "'*'"),
    ):
        out = _run(args, env)
        assert out.returncode == 1 and message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert len(svc.list_keys()) == 2


def test_the_event_loop_decides_from_memory_only_and_never_waits_on_the_database(
    svc: JobService,
) -> None:
    from jobq.api.auth import Authenticator

    key, token = svc.create_key("k", ["*"], ["read"])
    now = [1000.0]
    auth = Authenticator(svc, clock=lambda: now[0])
    asked: list[str] = []
    for name in ("keys_configured", "find_key", "touch_key"):
        real = getattr(svc, name)
        setattr(svc, name, lambda *a, _n=name, _real=real: (asked.append(_n), _real(*a))[1])

    assert auth.caller_from_memory(token, header_given=True) is None  # nothing remembered
    assert asked == []
    assert auth.caller(token, header_given=True).key.id == key.id  # asks the database
    assert asked == ["keys_configured", "find_key", "touch_key"]
    asked.clear()
    assert auth.caller_from_memory(token, header_given=True).key.id == key.id
    from jobq.keys import new_token

    unknown = str(new_token())  # well formed, its prefix never looked up
    assert auth.caller_from_memory(unknown, header_given=True) is None
    with pytest.raises(Unauthorized):  # malformed: refused without asking anyone
        auth.caller_from_memory("jobq_bogus", header_given=True)
    assert asked == []
    now[0] += auth.ttl + 0.1  # what it remembered is stale: the database must be asked
    assert auth.caller_from_memory(token, header_given=True) is None
    assert asked == []
