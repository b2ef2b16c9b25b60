"""The load of a chaos campaign: concurrent REST clients submitting jobs with idempotency
keys, retrying until each is acknowledged, counting what the server answered."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Submission:
    key: str
    job_id: int | None = None
    status: int | None = None
    acked_at: float | None = None  # time.time() of the 2xx


class LoadGen:
    """Concurrent clients submitting jobs with idempotency keys, retrying until acknowledged.

    A job counts as accepted once any attempt got a 2xx. Server errors are counted: every 500
    is a bug; a 503 must carry Retry-After. ``responses`` has every answer, as (sent, answered,
    status) in time.time(), status 0 for a failed connection; ``stop()`` ends the run early.
    """

    def __init__(self, api_url: str | Sequence[str], clients: int,
                 make_job: Callable[[int], dict[str, Any]], total: int, deadline_s: float = 240,
                 run_id: str | None = None, timeout: float = 10, pace: float = 0) -> None:
        # Several API replicas: each job starts on one of them, and a request that fails to
        # get an answer is tried on the next (the idempotency key makes that safe).
        self.api_urls = [api_url] if isinstance(api_url, str) else list(api_url)
        self.timeout = timeout
        self.pace = pace  # each client's pause between jobs: a load spread over time
        self.clients = clients
        self.make_job = make_job
        self.total = total
        self.deadline = time.monotonic() + deadline_s
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.submissions = [Submission(f"{self.run_id}-{i}") for i in range(total)]
        self.server_errors = 0
        self.bad_503 = 0
        self.good_503 = 0
        self.conn_errors = 0
        self.created_twice = 0  # 201 for a key that had been acknowledged before
        self.responses: list[tuple[float, float, int]] = []
        self._next = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGen:
        for i in range(self.clients):
            t = threading.Thread(target=self._client, name=f"client-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def join(self, timeout: float | None = None) -> None:
        end = time.monotonic() + (timeout if timeout is not None else 1e9)
        for t in self._threads:
            t.join(max(end - time.monotonic(), 0))

    def stop(self) -> None:
        """Take no more submissions: those under way go on until acknowledged, the rest are
        dropped from the run (as if ``total`` had been smaller)."""
        with self._lock:
            self.total = self._next
            del self.submissions[self._next:]

    @property
    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.job_id is not None]

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.total:
                return None
            self._next += 1
            return self._next - 1

    def _client(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while time.monotonic() < self.deadline:
                i = self._take()
                if i is None:
                    return
                self._submit(client, i)
                time.sleep(self.pace)

    def _submit(self, client: httpx.Client, i: int) -> None:
        sub = self.submissions[i]
        body = {**self.make_job(i), "idempotency_key": sub.key}
        acked_before = False
        replica = i % len(self.api_urls)
        while time.monotonic() < self.deadline:
            sent = time.time()
            try:
                r = client.post(f"{self.api_urls[replica]}/jobs", json=body)
            except httpx.HTTPError:
                with self._lock:
                    self.conn_errors += 1
                    self.responses.append((sent, time.time(), 0))
                replica = (replica + 1) % len(self.api_urls)
                time.sleep(0.1 + random.random() * 0.2)
                continue
            with self._lock:
                self.responses.append((sent, time.time(), r.status_code))
            if r.status_code in (200, 201):
                if r.status_code == 201 and acked_before:
                    with self._lock:
                        self.created_twice += 1
                sub.job_id, sub.status = r.json()["id"], r.status_code
                sub.acked_at = time.time()
                return
            if r.status_code >= 500:
                with self._lock:
                    if r.status_code == 503 and r.headers.get("retry-after"):
                        self.good_503 += 1
                    else:
                        self.server_errors += 1
                        if r.status_code == 503:
                            self.bad_503 += 1
                time.sleep(0.2 + random.random() * 0.3)
                continue
            # A 4xx for a valid job is a bug too; record it as such and give up on this one.
            with self._lock:
                self.server_errors += 1
            return
