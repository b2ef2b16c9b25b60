"""Waiting for a job to become final: ``JobService.wait`` and ``GET /jobs/{id}?wait=S``.

One ``Waits`` per service process holds every waiter in memory, by job id, and ONE listener
for the whole process, on a thread of its own (``store.listen_final``): on PostgreSQL a LISTEN
connection on the finished jobs' channel, whose notifications name the ids (sent by the
writes that make jobs final, in the same statement or transaction); on SQLite a watch of the
file's commit counter, which wakes every waiter. A waiter that is woken reads its job once.

So an idle wait holds no database connection and makes no query: it reads its job when it
starts, when it is woken, every ``recheck`` seconds (which covers a notification missed while
the listener reconnected: a reconnection also wakes everyone), and never in a tight loop.
Woken by a commit that may concern anyone (SQLite), a waiter reads at most every ``SPACING``
seconds. How many wait at once is bounded (``max_waiters``): past it a wait is refused
(RateLimited, HTTP 429), since each holds a request open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from jobq.errors import RateLimited
from jobq.types import Job

log = logging.getLogger("jobq.waits")

#: Longest wait of one call (seconds); ``GET /jobs/{id}?wait=`` takes at most this.
MAX_WAIT_SECONDS = 60.0
#: Fewest seconds between two reads of one waiter woken by an untargeted wake-up.
SPACING = 0.1

#: What a waiter is called with: True when its own job was named, False for "anyone".
Wake = Callable[[bool], None]


class Waits:
    """The waiters of one process and the listener that wakes them."""

    def __init__(self, listen: Callable[[Callable[[list[int] | None], None]],
                                        Coroutine[Any, Any, None] | None],
                 *, max_waiters: int, recheck: float, poll: float) -> None:
        """``listen(heard)``: the store's ``listen_final``; ``recheck``: seconds between
        the reads of a waiter that hears nothing; ``poll``: the same where nothing can be
        listened to (an in-memory SQLite database, a pooler without a listen URL)."""
        self._listen = listen
        self.max_waiters = max_waiters
        self._recheck, self._poll = recheck, poll
        self._lock = threading.Lock()
        self._waiters: dict[int, set[Wake]] = {}
        self._count = 0
        self._started = False
        self._listening = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    # -- the listener ---------------------------------------------------------------------

    def _heard(self, ids: list[int] | None) -> None:
        with self._lock:
            if ids is None:
                targets = [(w, False) for ws in self._waiters.values() for w in ws]
            else:
                targets = [(w, True) for i in ids for w in self._waiters.get(i, ())]
        for wake, targeted in targets:
            wake(targeted)

    def _start(self) -> None:
        """Start the listener, once, at the first wait (a process that never waits never
        opens its connection)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        coro = self._listen(self._heard)
        if coro is None:
            return
        self._listening = True
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._task = loop.create_task(coro)
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
            loop.close()

        self._thread = threading.Thread(target=run, name="jobq-waits", daemon=True)
        self._thread.start()
        ready.wait()

    def close(self) -> None:
        """Stop the listener (the waiters still waiting end at their deadlines)."""
        loop, task, thread = self._loop, self._task, self._thread
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop ended already
                loop.call_soon_threadsafe(task.cancel)
        if thread is not None:
            thread.join(timeout=5)

    @property
    def waiting(self) -> int:
        return self._count

    @contextlib.contextmanager
    def _registered(self, job_id: int, wake: Wake) -> Iterator[None]:
        self._start()
        with self._lock:
            if self._count >= self.max_waiters:
                raise RateLimited(1, f"waiting requests (JOBQ_MAX_WAITERS={self.max_waiters})")
            self._count += 1
            self._waiters.setdefault(job_id, set()).add(wake)
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
                ws = self._waiters.get(job_id)
                if ws is not None:
                    ws.discard(wake)
                    if not ws:
                        del self._waiters[job_id]

    @property
    def _between_reads(self) -> float:
        return self._recheck if self._listening else self._poll

    # -- waiting --------------------------------------------------------------------------

    def wait(self, job_id: int, timeout: float, read: Callable[[], Job]) -> Job:
        """``read()`` until the job is final or ``timeout`` seconds passed; the last read."""
        deadline = time.monotonic() + timeout
        woken = threading.Event()
        targeted = [True]

        def wake(named: bool) -> None:
            targeted[0] = named
            woken.set()

        with self._registered(job_id, wake):
            while True:
                woken.clear()  # before reading: a wake-up from now on is not lost
                read_at = time.monotonic()
                job = read()
                left = deadline - time.monotonic()
                if job.state.is_final or left <= 0:
                    return job
                if woken.wait(min(left, self._between_reads)) and not targeted[0]:
                    time.sleep(max(0.0, min(read_at + SPACING, deadline) - time.monotonic()))

    async def wait_async(self, job_id: int, timeout: float,
                         read: Callable[[], Job]) -> Job:
        """``wait`` for an event loop: ``read`` runs on a thread, the waiting on the loop
        (so an idle waiter holds neither a thread nor a connection). Cancelling it (a client
        that went away) unregisters it at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        woken = asyncio.Event()
        targeted = [True]

        def wake(named: bool) -> None:  # on the listener's thread
            def woke() -> None:
                targeted[0] = named
                woken.set()
            with contextlib.suppress(RuntimeError):  # the waiter's loop is closed: gone
                loop.call_soon_threadsafe(woke)

        with self._registered(job_id, wake):
            while True:
                woken.clear()
                read_at = loop.time()
                job = await asyncio.to_thread(read)
                left = deadline - loop.time()
                if job.state.is_final or left <= 0:
                    return job
                try:
                    await asyncio.wait_for(woken.wait(), min(left, self._between_reads))
                except asyncio.TimeoutError:
                    continue
                if not targeted[0]:
                    await asyncio.sleep(max(0.0, min(read_at + SPACING, deadline) - loop.time()))
