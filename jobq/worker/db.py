"""How the worker calls the store: its blocking calls on a small thread pool, so the event loop
(and the handlers on it) never waits for the database; and the writes that touch leases one at
a time.

Why one at a time: the heartbeat and the outcome writes of one worker lock the same rows, in
whatever order each statement's plan takes them; run at the same time they could deadlock
(PostgreSQL aborts one, a stall of about a second). One at a time, they cannot. The heartbeat
waits only so long for its turn, though (``turn``): a write that hangs must not let the leases
of the running jobs expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger("jobq.worker")

T = TypeVar("T")


class Db:
    """The thread pool of one worker's store calls and the lock of its lease writes."""

    def __init__(self, threads: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jobq-db")
        self._lease_writes = asyncio.Lock()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """A lease write (complete, fail, release): waits for its turn, however long."""
        async with self._lease_writes:
            return await self.call(fn, *args)

    @contextlib.asynccontextmanager
    async def turn(self, patience: float) -> AsyncIterator[None]:
        """The lease writes' lock, waited for at most ``patience`` seconds; then without it."""
        try:
            await asyncio.wait_for(self._lease_writes.acquire(), timeout=patience)
        except asyncio.TimeoutError:
            log.warning("an outcome write has taken over %.0fs; heartbeating alongside it",
                        patience)
            yield
            return
        try:
            yield
        finally:
            self._lease_writes.release()

    def close(self) -> None:
        # Not waiting: a call still in flight (say, stuck on a dead connection) must not hold
        # up the end of a stop that has already released or written everything it could.
        self._pool.shutdown(wait=False)
