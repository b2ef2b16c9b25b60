"""Helpers of the dashboard tests: a real server, forms and their CSRF tokens."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI


HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    """Run ``app`` under uvicorn on a free loopback port in a thread; yield a client for it
    (cookies kept, redirects not followed, so that tests see each 303)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5,
        http="jobq.api.protocol:HttpProtocol"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15,
                          trust_env=False) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "the API server did not stop"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def post_form(client: httpx.Client, path: str, **fields: Any) -> httpx.Response:
    return client.post(path, data=fields)
