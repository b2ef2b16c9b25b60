"""Hostile input against the HTTP API, through a real uvicorn server, on every backend.

Every refusal must be an ``application/problem+json`` body that names the field at fault and
shows nothing of the internals (no traceback, no SQL, no driver name), and after every refused
request the database must hold nothing new. The limits themselves live in ``jobq.jsonvalue``
(shape of JSON values), ``jobq.types`` (fields of a job) and ``jobq.api.app`` (body size).
"""

from __future__ import annotations

import base64
import json
import select
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pydantic
import pytest
import sqlalchemy.exc
from test_api import PROBLEM, nested, serve, stored_ids

from jobq.api import create_app
from jobq.api.app import MAX_BODY_BYTES
from jobq.api.models import EnqueueQuery
from jobq.errors import StoreUnavailable
from jobq.jsonvalue import LIMITS
from jobq.registry import load_registry
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore, open_store

#: What must never appear in an answer: tracebacks, SQL, driver and module names.
LEAKS = (
    "Traceback", 'File "', ".py", "sqlalchemy", "sqlalche.me", "psycopg", "sqlite", "SELECT ",
    "INSERT ", "UPDATE ", "jobq_jobs", "jobq_attempts",
)


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings=settings)) as c:
        yield c


def no_leak(resp: httpx.Response) -> None:
    for leak in LEAKS:
        assert leak not in resp.text, (leak, resp.text[:500])


def refused(resp: httpx.Response, status: int, field: str) -> dict[str, Any]:
    """Assert ``resp`` is a problem with ``status`` that names ``field`` and leaks nothing."""
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"] == PROBLEM, resp.headers
    no_leak(resp)
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["title"] and body["type"]
    assert field in body["detail"], (field, body["detail"])
    if body["type"] == "urn:jobq:problem:validation-error":
        assert any(field in map(str, e["loc"]) for e in body["errors"]), (field, body["errors"])
        assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])
    return body


def port_of(client: httpx.Client) -> int:
    return int(str(client.base_url).rsplit(":", 1)[1])


# -- raw HTTP, for what httpx will not send -----------------------------------------------------


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (with a Content-Length), without waiting for the connection to end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def raw_request(
    port: int, head: str, chunks: Iterable[bytes] = (), timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and headers), then ``chunks`` as they are; read the answer.

    Stops sending as soon as the server answers (or stops reading), as a careful client does.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n")
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:  # an answer is on its way: stop sending
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server stopped reading
                break
        return _read_response(sock)


def chunked(body: bytes, size: int = 65536) -> Iterator[bytes]:
    """``body`` in HTTP/1.1 chunked transfer coding."""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        yield b"%x\r\n" % len(part) + part + b"\r\n"
    yield b"0\r\n\r\n"


def body_of_size(n: int) -> bytes:
    """A valid job as compact JSON of exactly ``n`` bytes (strings of at most 60,000 chars)."""
    head, tail = b'{"task_type":"echo","payload":[', b"]}"
    room = n - len(head) - len(tail)
    k = -(-room // 60_003)  # each string costs its length + 2 quotes + 1 comma (but the last)
    total = room - 3 * k + 1
    sizes = [total // k + (1 if i < total % k else 0) for i in range(k)]
    body = head + b",".join(b'"' + b"x" * s + b'"' for s in sizes) + tail
    assert len(body) == n
    return body


# -- body size ----------------------------------------------------------------------------------


def test_declared_length_over_limit_is_refused_before_the_body_is_read(
    client: httpx.Client, store: SqlStore
) -> None:
    # (A length beyond 64 bits never reaches the app: uvicorn's parser answers 400 itself.)
    for declared in (MAX_BODY_BYTES + 1, 10**12, 2**63):
        # Only the head is sent: an answer proves the server did not wait for the body.
        status, headers, body = raw_request(
            port_of(client),
            "POST /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n",
            timeout=5,
        )
        assert status == 413, body
        assert headers["content-type"] == PROBLEM
        problem = json.loads(body)
        assert problem["status"] == 413 and "body" in problem["detail"]
        assert str(MAX_BODY_BYTES) in problem["detail"]
    assert stored_ids(store) == []
    assert client.get("/healthz").status_code == 200


def test_chunked_body_over_limit_is_413(client: httpx.Client, store: SqlStore) -> None:
    too_big = body_of_size(MAX_BODY_BYTES + 1)
    # Raw: Transfer-Encoding: chunked and no Content-Length at all; and a body that never ends.
    for chunks in (chunked(too_big), (b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
                                      for _ in range(10_000))):
        status, headers, body = raw_request(
            port_of(client),
            "POST /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n",
            chunks,
        )
        assert status == 413, body
        assert headers["content-type"] == PROBLEM
        assert "body" in json.loads(body)["detail"]
        assert stored_ids(store) == []
    # httpx streams a generator body chunked, as most clients do with a stream.
    resp = client.post(
        "/jobs",
        content=iter([too_big[:500_000], too_big[500_000:]]),
        headers={"content-type": "application/json"},
    )
    assert resp.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in resp.request.headers
    refused(resp, 413, "body")
    assert stored_ids(store) == []
    # The same connection and server carry on.
    assert client.post("/jobs", json={"task_type": "echo"}).status_code == 201


def test_oversized_body_never_reaches_a_route_that_ignores_its_body(
    client: httpx.Client, store: SqlStore
) -> None:
    job = client.post("/jobs", json={"task_type": "echo"}).json()
    for path in (f"/jobs/{job['id']}/cancel", f"/jobs/{job['id']}/retry"):
        resp = client.post(path, content=iter([b"x" * MAX_BODY_BYTES, b"x"]))
        refused(resp, 413, "body")
        resp = client.post(path, content=b"x" * (MAX_BODY_BYTES + 1))
        refused(resp, 413, "body")
    got = store.get(job["id"])
    assert got.state.value == "pending" and got.finished_at is None
    assert stored_ids(store) == [job["id"]]


def test_body_exactly_at_the_limit_is_accepted(client: httpx.Client, store: SqlStore) -> None:
    at_limit = body_of_size(MAX_BODY_BYTES)
    resp = client.post("/jobs", content=at_limit, headers={"content-type": "application/json"})
    assert resp.status_code == 201, resp.text[:300]
    assert store.get(resp.json()["id"]).payload == json.loads(at_limit)["payload"]
    resp = client.post(
        "/jobs", content=iter([at_limit[:-1], at_limit[-1:]]),
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 201, resp.text[:300]
    before = stored_ids(store)
    over = body_of_size(MAX_BODY_BYTES + 1)
    refused(client.post("/jobs", content=over, headers={"content-type": "application/json"}),
            413, "body")
    assert stored_ids(store) == before


# -- the shape of JSON values -------------------------------------------------------------------

# (what, value at the limit, value just over it, words the refusal must contain)
SHAPES: list[tuple[str, Any, Any, str]] = [
    ("depth", nested(LIMITS.max_depth), nested(LIMITS.max_depth + 1), f"{LIMITS.max_depth} levels"),
    ("keys per object", {str(i): i for i in range(LIMITS.max_keys)},
     {"a": {str(i): i for i in range(LIMITS.max_keys + 1)}}, f"{LIMITS.max_keys} keys"),
    ("values in all", [0] * (LIMITS.max_nodes - 1), [[0] * (LIMITS.max_nodes - 2), 0],
     f"{LIMITS.max_nodes} values"),
    ("string length", "é" * LIMITS.max_string_chars, ["x", "é" * (LIMITS.max_string_chars + 1)],
     f"{LIMITS.max_string_chars} characters"),
    ("key length", {"k" * LIMITS.max_string_chars: 1}, {"k" * (LIMITS.max_string_chars + 1): 1},
     f"{LIMITS.max_string_chars} characters"),
    ("integer digits", -(10**LIMITS.max_int_digits - 1), {"n": 10**LIMITS.max_int_digits},
     f"{LIMITS.max_int_digits} digits"),
]


@pytest.mark.parametrize("what, ok, over, words", SHAPES, ids=[s[0] for s in SHAPES])
def test_json_shape_limits(
    client: httpx.Client, store: SqlStore, what: str, ok: Any, over: Any, words: str
) -> None:
    resp = client.post("/jobs", json={"task_type": "echo", "payload": over})
    body = refused(resp, 422, "payload")
    assert words in body["detail"], body["detail"]
    assert stored_ids(store) == []

    resp = client.post("/jobs", json={"task_type": "echo", "payload": ok})
    assert resp.status_code == 201, resp.text[:300]
    assert store.get(resp.json()["id"]).payload == ok
    assert client.get(f"/jobs/{resp.json()['id']}").json()["payload"] == ok


def test_query_form_payload_has_the_same_string_limits(
    client: httpx.Client, store: SqlStore
) -> None:
    long = "x" * (LIMITS.max_string_chars + 1)
    # Over HTTP, a query this long does not even reach the app: jobq's protocol refuses a
    # head over JOBQ_API_MAX_HEADER_BYTES (431), uvicorn's own parser a request line of more
    # than 64 KiB (a plain-text 400). Refused either way.
    status, _, _ = raw_request(
        port_of(client),
        f"POST /jobs?task_type=echo&payload={long} HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Length: 0\r\n",
    )
    assert status in (400, 422, 431)
    assert stored_ids(store) == []
    # The query model has the JSON-value limits all the same, should a server pass it on.
    with pytest.raises(pydantic.ValidationError) as info:
        EnqueueQuery(task_type="echo", payload=long)
    assert info.value.errors()[0]["loc"] == ("payload",)
    assert f"{LIMITS.max_string_chars} characters" in str(info.value)
    refused(client.post("/jobs", params={"task_type": "echo", "payload": "a\x00b"}), 422,
            "payload")
    assert stored_ids(store) == []


# -- values no backend may see, refused identically by both --------------------------------------


def _raw(payload_json: str, field: str = "payload") -> bytes:
    return ('{"task_type": "echo", "' + field + '": ' + payload_json + "}").encode()


# (name, raw JSON body, field the refusal names)
UNSTORABLE: list[tuple[str, bytes, str]] = [
    ("NaN", _raw("NaN"), "payload"),
    ("Infinity", _raw("Infinity"), "payload"),
    ("-Infinity deep", _raw('{"a": [[{"b": -Infinity}]]}'), "payload"),
    ("float overflow", _raw("[1e400]"), "payload"),
    ("NUL in string", _raw(r'"a\u0000b"'), "payload"),
    ("NUL in key", _raw(r'{"k\u0000": 1}'), "payload"),
    ("NUL deep", _raw(r'{"a": [0, {"b": "\u0000"}]}'), "payload"),
    ("lone high surrogate", _raw(r'"\ud800"'), "payload"),
    ("lone low surrogate key", _raw(r'{"\udfff": 1}'), "payload"),
    ("reversed surrogate pair", _raw(r'"\udc00\ud800"'), "payload"),
    ("surrogate as raw bytes", b'{"task_type": "echo", "payload": "\xed\xa0\x80"}', "payload"),
    ("NUL in idempotency key", _raw(r'"k\u0000"', "idempotency_key"), "idempotency_key"),
    ("surrogate in idempotency key", _raw(r'"\ud83d"', "idempotency_key"), "idempotency_key"),
    ("NUL in task_type", b'{"task_type": "echo\\u0000"}', "task_type"),
    ("surrogate in queue", _raw(r'"\ud800"', "queue"), "queue"),
    ("NaN delay", _raw("NaN", "delay_seconds"), "delay_seconds"),
    ("Infinity priority", _raw("Infinity", "priority"), "priority"),
]


def _truncate_pg(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobq_jobs, jobq_attempts, jobq_workers RESTART IDENTITY CASCADE")


@pytest.mark.postgres
def test_unstorable_values_are_refused_identically_on_both_backends(
    pg_url: str, tmp_path: Path
) -> None:
    """The same request gets the same answer, byte for byte, from SQLite and PostgreSQL."""
    _truncate_pg(pg_url)
    urls = [f"sqlite:///{tmp_path / 'jobq.db'}", pg_url]
    answers: dict[str, list[tuple[int, str, Any]]] = {}
    for url in urls:
        settings = load_settings(database_url=url)
        store = open_store(settings)
        try:
            with serve(create_app(settings=settings)) as client:
                got = answers.setdefault(url, [])
                for name, content, field in UNSTORABLE:
                    resp = client.post(
                        "/jobs", content=content, headers={"content-type": "application/json"}
                    )
                    refused(resp, 422, field)
                    got.append((resp.status_code, resp.headers["content-type"], resp.json()))
                    assert stored_ids(store) == [], name
                # The query form too (a lone surrogate cannot travel in a URL: it is decoded
                # to U+FFFD before jobq sees it).
                resp = client.post("/jobs", params={"task_type": "echo", "payload": "\x00"})
                refused(resp, 422, "payload")
                got.append((resp.status_code, resp.headers["content-type"], resp.json()))
                assert stored_ids(store) == []
        finally:
            store.dispose()
    sqlite_answers, pg_answers = answers[urls[0]], answers[urls[1]]
    for (name, _, _), a, b in zip(UNSTORABLE + [("query NUL", b"", "")], sqlite_answers,
                                  pg_answers):
        assert a == b, name


# -- names, types and ranges --------------------------------------------------------------------

HOSTILE_NAMES = [
    "", " echo", "echo ", "echo\n", "\techo", "-echo", ".echo", "_echo", "../echo", "echo/x",
    "echo;DROP TABLE x;--", "echo' OR '1'='1", "écho", "ｅcho", "echo\u200b", "e\u0301cho",
    "a" * 129, "echo%00", "$(id)", "{{7*7}}", "echo\\",
]


def test_hostile_names_are_refused_in_every_form(client: httpx.Client, store: SqlStore) -> None:
    for name in HOSTILE_NAMES:
        for field in ("task_type", "queue"):
            base = {"task_type": "echo", field: name}
            refused(client.post("/jobs", json=base), 422, field)
            refused(client.post("/jobs", params=base), 422, field)
            if name:  # an empty filter is "no filter"; FastAPI passes it as ""
                refused(client.get("/jobs", params={field: name}), 422, field)
        assert stored_ids(store) == [], name
    # The longest legal name works, and the tables are still there.
    longest = "a" + "Z9_.:-" * 21 + "b"
    assert len(longest) == 128
    resp = client.post("/jobs", json={"task_type": "echo", "queue": longest})
    assert resp.status_code == 201, resp.text
    assert client.get("/jobs", params={"queue": longest}).json()["items"][0]["queue"] == longest


# (name, JSON body fields besides task_type, field the refusal names)
BAD_TYPED: list[tuple[str, dict[str, Any], str]] = [
    ("priority too high", {"priority": 1001}, "priority"),
    ("priority beyond int64", {"priority": 2**63}, "priority"),
    ("priority far beyond", {"priority": -(10**40)}, "priority"),
    ("priority a string", {"priority": "5"}, "priority"),
    ("priority a boolean", {"priority": True}, "priority"),
    ("priority a fraction", {"priority": 0.5}, "priority"),
    ("priority a list", {"priority": [1]}, "priority"),
    ("max_attempts 0", {"max_attempts": 0}, "max_attempts"),
    ("max_attempts huge", {"max_attempts": 10**20}, "max_attempts"),
    ("max_attempts a string", {"max_attempts": "3"}, "max_attempts"),
    ("delay negative", {"delay_seconds": -0.001}, "delay_seconds"),
    ("delay beyond a year", {"delay_seconds": 1e308}, "delay_seconds"),
    ("delay a boolean", {"delay_seconds": True}, "delay_seconds"),
    ("delay a string", {"delay_seconds": "10"}, "delay_seconds"),
    ("delay 'NaN' as a string", {"delay_seconds": "NaN"}, "delay_seconds"),
    ("run_at a number", {"run_at": 1_700_000_000_000}, "run_at"),
    ("run_at not a date", {"run_at": "2030-02-30T00:00:00Z"}, "run_at"),
    ("run_at bad offset", {"run_at": "2030-01-01T00:00:00+25:00"}, "run_at"),
    ("run_at past datetime's end on SQLite", {"run_at": "9999-12-31T23:59:59.999999Z"},
     "run_at"),
    ("run_at before the range", {"run_at": "0001-01-01T00:00:00Z"}, "run_at"),
    ("run_at overflows to UTC", {"run_at": "0001-01-01T00:00:00+05:00"}, "run_at"),
    ("idempotency key a number", {"idempotency_key": 42}, "idempotency_key"),
    ("idempotency key too long", {"idempotency_key": "k" * 256}, "idempotency_key"),
    ("payload unknown field", {"bogus": 1}, "bogus"),
    ("unknown field, other case", {"Task_Type": "echo"}, "Task_Type"),
    ("unknown field, id", {"id": 5}, "id"),
    ("unknown field, state", {"state": "done"}, "state"),
]


@pytest.mark.parametrize("fields, field", [(b[1], b[2]) for b in BAD_TYPED],
                         ids=[b[0] for b in BAD_TYPED])
def test_typed_fields_are_type_and_range_checked(
    client: httpx.Client, store: SqlStore, fields: dict[str, Any], field: str
) -> None:
    refused(client.post("/jobs", json={"task_type": "echo", **fields}), 422, field)
    assert stored_ids(store) == []


def test_query_form_checks_the_same_ranges(client: httpx.Client, store: SqlStore) -> None:
    for params, field in [
        ({"priority": "1001"}, "priority"),
        ({"priority": "1e3"}, "priority"),
        ({"max_attempts": "0"}, "max_attempts"),
        ({"delay_seconds": "inf"}, "delay_seconds"),
        ({"delay_seconds": "-1"}, "delay_seconds"),
        ({"run_at": "9999-12-31T23:59:59.999999"}, "run_at"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"bogus": "1"}, "bogus"),
    ]:
        refused(client.post("/jobs", params={"task_type": "echo", **params}), 422, field)
    assert stored_ids(store) == []
    # The edges of the ranges are fine.
    for fields in ({"priority": 1000}, {"priority": -1000}, {"max_attempts": 1000},
                   {"delay_seconds": 366 * 86400}, {"run_at": "9999-12-30T00:00:00Z"},
                   {"run_at": "0001-01-02T00:00:00Z"}, {"idempotency_key": "k" * 255}):
        resp = client.post("/jobs", json={"task_type": "echo", **fields})
        assert resp.status_code == 201, (fields, resp.text)
        job = client.get(f"/jobs/{resp.json()['id']}")
        assert job.status_code == 200, job.text


# -- listing, ids and cursors -------------------------------------------------------------------


def test_list_parameters_ids_and_cursors_are_validated(
    client: httpx.Client, store: SqlStore
) -> None:
    job = client.post("/jobs", json={"task_type": "echo"}).json()
    for params, field in [
        ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "-1"}, "limit"),
        ({"limit": "1e2"}, "limit"), ({"limit": "9" * 40}, "limit"), ({"limit": "١٠"}, "limit"),
        ({"state": "PENDING"}, "state"), ({"state": "pending "}, "state"),
        ({"cursor": ""}, "cursor"), ({"cursor": "x" * 129}, "cursor"),
        ({"stat": "failed"}, "stat"), ({"queue": "default", "Queue": "x"}, "Queue"),
    ]:
        refused(client.get("/jobs", params=params), 422, field)
    for cursor in ("!!!!", "ag", "AAAA", "ajA", "j0", "ai0", "j-1", "j+1", "j 1", "j1_0",
                   "j" + "9" * 30, "j١", "k5", "\x00", "\ufffd", "j" * 128):
        encoded = base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")
        for value in (cursor, encoded):
            if len(value) <= 128 and value:
                refused(client.get("/jobs", params={"cursor": value}), 422, "cursor")
    for raw in ("%ff", "%00", "%ED%A0%80"):
        refused(client.get(f"/jobs?cursor={raw}"), 422, "cursor")
    for bad in ("0", "-1", str(2**63), "9" * 40, "1e3", "0x10", "١", "abc", "1;DROP"):
        refused(client.get(f"/jobs/{quote(bad)}"), 422, "job_id")
        refused(client.post(f"/jobs/{quote(bad)}/cancel"), 422, "job_id")
        refused(client.post(f"/jobs/{quote(bad)}/retry"), 422, "job_id")
    refused(client.get(f"/jobs/{2**63 - 1}"), 404, str(2**63 - 1))
    assert stored_ids(store) == [job["id"]]
    assert store.get(job["id"]).state.value == "pending"


# -- internals never reach the client -----------------------------------------------------------


def test_driver_errors_never_reach_the_client(
    settings: Settings, store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = JobService(store, load_registry(settings.tasks), settings)
    sql = "SELECT jobq_jobs.id FROM jobq_jobs WHERE jobq_jobs.queue = %(queue)s"
    errors: list[Exception] = [
        sqlalchemy.exc.ProgrammingError(sql, {"queue": "x"}, Exception('relation "jobq_jobs"')),
        sqlalchemy.exc.DataError(sql, {}, Exception("value out of range for type bigint")),
        sqlalchemy.exc.IntegrityError(sql, {}, Exception("duplicate key value")),
        psycopg.errors.UndefinedTable('relation "jobq_jobs" does not exist'),
        RecursionError("maximum recursion depth exceeded in File \"x.py\""),
    ]
    with serve(create_app(service=service)) as client:
        for exc in errors:
            def boom(*args: Any, _exc: Exception = exc, **kwargs: Any) -> Any:
                raise _exc

            monkeypatch.setattr(service, "list_jobs", boom)
            resp = client.get("/jobs")
            refused(resp, 500, "unexpected error")
            assert type(exc).__name__ not in resp.text
        monkeypatch.setattr(
            service, "list_jobs",
            lambda *a, **k: (_ for _ in ()).throw(
                StoreUnavailable("could not connect to server at 127.0.0.1:5432 user=postgres")
            ),
        )
        resp = client.get("/jobs")
        refused(resp, 503, "database")
        assert "5432" not in resp.text and "postgres" not in resp.text
        assert client.get("/healthz").status_code == 200
