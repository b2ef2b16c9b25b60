"""Authentication before the body, and the limit on failed authentications per client address.
On every backend, through a real uvicorn server over real HTTP (raw sockets where a client
library would send the body anyway). One test wraps the server's ``find_key`` in a spy that
calls the real one, to count the database lookups.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
from test_api import problem
from test_auth import bearer, make_key, serve_on, svc, tuned  # noqa: F401 (svc: a fixture)

from jobq.api import create_app
from jobq.api.auth import RateLimiter, client_key
from jobq.keys import new_token
from jobq.service import JobService
from jobq.settings import Settings


def port_of(client: httpx.Client) -> int:
    return int(str(client.base_url).rsplit(":", 1)[1])


def status_without_body(port: int, extra_header: bytes) -> int:
    """Send the head of a POST announcing a 1 MB body, and no body; the answer's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n" + extra_header + b"\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)  # times out, failing the test, if the server waits
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1])


def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(
    settings: Settings, svc: JobService  # noqa: F811
) -> None:
    reader = make_key(svc, ["*"], ["read"])
    app = create_app(settings=tuned(settings, api_key_cache_seconds=0))
    with serve_on(app) as client:
        port = port_of(client)
        assert status_without_body(port, b"") == 401
        assert status_without_body(port, b"Authorization: Bearer " +
                                   str(new_token()).encode() + b"\r\n") == 401
        # A valid key without the route's scope is refused as soon, with 403.
        assert status_without_body(port, f"Authorization: Bearer {reader}\r\n".encode()) == 403
        # Nor is its body parsed: a malformed one gets a 401, not a 422.
        resp = client.post("/jobs", content=b'{"task_type": ',
                           headers={"Content-Type": "application/json"})
        problem(resp, 401, "urn:jobq:problem:unauthorized")
        assert resp.headers["www-authenticate"] == 'Bearer realm="jobq"'
        resp = client.post("/jobs", content=b'{"task_type": ', headers={
            "Content-Type": "application/json", **bearer(reader)})
        assert problem(resp, 403, "urn:jobq:problem:forbidden")["required_scope"] == "enqueue"
    assert svc.list_jobs().items == []


def test_failed_authentications_are_limited_per_client_address_before_any_lookup(
    settings: Settings, svc: JobService  # noqa: F811
) -> None:
    token = make_key(svc, ["*"], ["read"])
    limited = tuned(settings, api_key_cache_seconds=0, auth_failure_burst=3,
                    auth_failures_per_second=0.5)
    app = create_app(settings=limited)
    with serve_on(app) as client:
        looked_up: list[str] = []
        server_service: Any = app.state.service
        real = server_service.find_key
        server_service.find_key = lambda prefix: (looked_up.append(prefix), real(prefix))[1]

        for _ in range(3):  # well-formed tokens of unknown keys: each costs a lookup
            problem(client.get("/jobs", headers=bearer(str(new_token()))), 401)
        assert len(looked_up) == 3
        resp = client.get("/jobs", headers=bearer(str(new_token())))
        p = problem(resp, 429, "urn:jobq:problem:rate-limited")
        retry_after = resp.headers["retry-after"]
        assert retry_after.isdigit() and 1 <= int(retry_after) <= 2, retry_after
        assert "failed authentications" in p["detail"] and retry_after in p["detail"]
        # The address waits whatever it sends, a valid token or none, and costs no lookup.
        problem(client.get("/jobs", headers=bearer(token)), 429)
        problem(client.post("/jobs", json={"task_type": "echo"}), 429)
        assert len(looked_up) == 3
        assert client.get("/healthz").status_code == 200  # open routes are not limited
        # Another client address has its own budget.
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(base_url=client.base_url, transport=other, timeout=15) as elsewhere:
            assert elsewhere.get("/jobs", headers=bearer(token)).status_code == 200
        # Past Retry-After, the address is served again.
        time.sleep(int(retry_after))
        assert client.get("/jobs", headers=bearer(token)).status_code == 200


def test_failure_counts_are_bounded_and_an_ipv6_client_counts_by_its_64() -> None:
    now = [0.0]
    failures = RateLimiter(per_second=1, burst=1, clock=lambda: now[0], max_keys=3)
    for address in ("a", "b", "c", "d"):
        assert failures.take(address) is None
    assert failures.wait("d") == 1 and failures.wait("b") == 1
    assert failures.wait("a") is None  # the least recently counted was forgotten
    assert failures.wait("d") == 1 and failures.take("d") == 1  # waiting spends nothing
    now[0] += 1
    assert failures.wait("d") is None

    def key(host: str) -> object:
        return client_key({"client": (host, 1234)})

    assert key("2001:db8::1") == key("2001:db8::ffff:1") != key("2001:db8:0:1::1")
    assert key("::ffff:192.0.2.7") == key("192.0.2.7") == "192.0.2.7"
    assert key("192.0.2.7") != key("192.0.2.8")
    assert client_key({"client": None}) is None
