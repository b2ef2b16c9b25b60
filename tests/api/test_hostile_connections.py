"""Hostile connections against a real API server process (`jobq api`, or uvicorn's own command
with jobq's protocol), over real sockets on 127.0.0.1: huge request heads, silent and slow
clients, more connections than a process may hold.

What a connection gets is a matter of the HTTP layer, not of the database, so these run on
SQLite only. Every socket has a timeout, every count is bounded, and the servers are stopped
by PID at the end (the ``procs`` fixture).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobq.harness import free_port, wait_for
from procs import Procs, env_for

PROBLEM = "application/problem+json"
#: Generous: the machine running the suite may be small and busy.
PATIENCE = 20.0


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2,
                         trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def start_api(procs: Procs, tmp_path: Path, *, command: str = "jobq",
              fd_limit: int | None = None, hard: bool = False, **env: str) -> int:
    """Start an API server process on a free port; return the port once it answers.

    ``command``: ``jobq`` (`jobq api`), or ``uvicorn-h11`` (the brief's uvicorn command with
    jobq's protocol over h11). ``fd_limit``: its soft limit on open files (``ulimit -Sn``),
    and its hard limit too when ``hard``.
    """
    port = free_port()
    if command == "jobq":
        args = [sys.executable, "-m", "jobq", "api", "--port", str(port)]
    else:
        args = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port),
                "--http", "jobq.api.protocol:BoundedH11Protocol"]
    if fd_limit is not None:
        which = "-n" if hard else "-Sn"
        args = ["/bin/sh", "-c", f'ulimit {which} {fd_limit} && exec "$0" "$@"', *args]
    environment = env_for(f"sqlite:///{tmp_path / 'jobq.db'}", JOBQ_LOG_LEVEL="warning", **env)
    procs.start(args, environment, "api")
    wait_for(lambda: _healthy(port), 60, "the API server")
    return port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
    sock.settimeout(PATIENCE)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes] | None:
    """The one response the server sends before closing; None when it closes without one.
    Raises socket.timeout when it does neither within the socket's timeout."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
            length = [line.split(":", 1)[1] for line in head.split("\r\n")
                      if line.startswith("content-length:")]
            if length and len(data) - len(head) - 4 >= int(length[0]):
                break
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    return int(status_line.split()[1]), headers, body


def problem(answer: tuple[int, dict[str, str], bytes] | None, status: int) -> dict[str, Any]:
    assert answer is not None, "the server closed the connection without an answer"
    got, headers, body = answer
    assert got == status, (got, body[:300])
    assert headers["content-type"] == PROBLEM
    assert headers.get("connection") == "close"
    doc: dict[str, Any] = json.loads(body)
    assert doc["status"] == status and doc["title"] and doc["detail"]
    return doc


def get_healthz(port: int) -> int:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=PATIENCE,
                      trust_env=False) as client:
        return client.get("/healthz").status_code


# -- request heads ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["jobq", "uvicorn-h11"])
def test_a_huge_head_is_refused_at_once_and_stalls_no_one(
    procs: Procs, tmp_path: Path, command: str
) -> None:
    port = start_api(procs, tmp_path, command=command)
    limit = 32 * 1024  # JOBQ_API_MAX_HEADER_BYTES's default
    # A header of up to 16 MiB, sent as a client that stops once it is answered.
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        sent, answered = 0, False
        while sent < 16 * 2**20:
            if select.select([sock], [], [], 0)[0]:
                answered = True
                break
            try:
                sock.sendall(b"a" * 65536)
            except OSError:
                break
            sent += 65536
        assert answered or sent < 16 * 2**20, "16 MiB of header were read without an answer"
        doc = problem(read_answer(sock), 431)
        assert doc["type"] == "urn:jobq:problem:request-head-too-large"
        assert str(limit) in doc["detail"]
        # The server is not busy with it: others are served meanwhile.
        assert get_healthz(port) == 200
    # A request line alone past the limit, and a head of many small headers, alike.
    for head in (b"GET /" + b"a" * limit + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
                 b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * (limit // 8 + 1) + b"\r\n"):
        with connect(port) as sock:
            sock.sendall(head)
            problem(read_answer(sock), 431)
    # Just under the limit is fine.
    with connect(port) as sock:
        pad = limit - 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * pad
                     + b"\r\n\r\n")
        answer = read_answer(sock)
        assert answer is not None and answer[0] == 200, answer


# -- slow and silent clients ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["jobq", "uvicorn-h11"])
def test_incomplete_heads_and_bodies_time_out_with_408(
    procs: Procs, tmp_path: Path, command: str
) -> None:
    port = start_api(procs, tmp_path, command=command, JOBQ_API_HEADER_TIMEOUT_SECONDS="1",
                     JOBQ_API_BODY_TIMEOUT_SECONDS="1")
    started = time.monotonic()
    with connect(port) as silent, connect(port) as trickle, connect(port) as slow_body:
        slow_body.sendall(b"POST /jobs HTTP/1.1\r\nHost: localhost\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        # A head sent a byte at a time, each well within any per-read timeout.
        for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n":
            trickle.sendall(bytes([byte]))
            if select.select([trickle], [], [], 0.05)[0]:
                break
        head = problem(read_answer(trickle), 408)
        assert "headers" in head["detail"]
        problem(read_answer(silent), 408)
        body = problem(read_answer(slow_body), 408)
        assert "body" in body["detail"]
    assert time.monotonic() - started < PATIENCE
    # A kept-alive connection that sends its next request late, but promptly once it starts,
    # is served: the deadline runs from a request's first byte.
    with connect(port) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = read_answer(sock)
            assert answer is not None and answer[0] == 200, answer
            time.sleep(0.7)
    assert get_healthz(port) == 200


def test_hundreds_of_slow_connections_leave_normal_clients_served(
    procs: Procs, tmp_path: Path
) -> None:
    # A common default: 1024 open files at most, or as here 256, and a high hard limit. The
    # server raises its own soft limit to fit JOBQ_API_MAX_CONNECTIONS (1000).
    port = start_api(procs, tmp_path, fd_limit=256)
    with ExitStack() as stack:
        for i in range(400):  # half silent, half stuck halfway through their heads
            sock = stack.enter_context(connect(port))
            if i % 2:
                sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: localhost\r\nContent-Le")
        started = time.monotonic()
        codes = [get_healthz(port) for _ in range(20)]
        assert codes == [200] * 20
        assert time.monotonic() - started < PATIENCE


def test_connections_past_the_cap_get_503_at_once_until_slow_ones_time_out(
    procs: Procs, tmp_path: Path
) -> None:
    port = start_api(procs, tmp_path, JOBQ_API_MAX_CONNECTIONS="20",
                     JOBQ_API_HEADER_TIMEOUT_SECONDS="2")
    with ExitStack() as stack:
        held = [stack.enter_context(connect(port)) for _ in range(20)]
        # Each of the 20 is accepted and waits for its head; the 21st is refused at once.
        time.sleep(0.3)
        with connect(port) as extra:
            doc = problem(read_answer(extra), 503)
            assert doc["type"] == "urn:jobq:problem:too-many-connections"
            assert "20" in doc["detail"]
        # ... with Retry-After, and a request already sent still gets the answer.
        with connect(port) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = read_answer(extra)
            assert answer is not None and answer[0] == 503 and answer[1]["retry-after"]
        # The silent ones are closed at their deadline; then clients are served again.
        for sock in held:
            problem(read_answer(sock), 408)
    wait_for(lambda: get_healthz(port) == 200, PATIENCE, "a served client after the timeouts")


def test_a_low_limit_on_open_files_lowers_the_cap_rather_than_run_out(
    procs: Procs, tmp_path: Path
) -> None:
    # Hard limit 200 too: the 1000 connections of the default cap cannot fit. What the process
    # keeps for itself (64, and 3 per pooled database connection: 60) leaves 76.
    port = start_api(procs, tmp_path, fd_limit=200, hard=True)
    assert "serving at most 76 connections per process" in procs.logs()
    with ExitStack() as stack:
        socks = [stack.enter_context(connect(port)) for _ in range(120)]
        time.sleep(0.5)
        refused = 0
        for sock in socks[76:]:  # those past the cap were answered at once
            answer = read_answer(sock)
            assert answer is not None and answer[0] == 503, answer
            refused += 1
        assert refused == 44
    wait_for(lambda: get_healthz(port) == 200, PATIENCE, "a served client after the closes")
