"""A running job's progress reports (``ctx.progress``), written at most once per
``MIN_INTERVAL`` seconds per job: the latest report is kept, the ones in between are
replaced, and the last one is written before the job's outcome (``flush``).

Reports come from the handler, on the event loop (async def) or on its thread (def); the
writes go through the worker's store threads, fenced by the lease (``store.set_progress``),
so a report that arrives late (the job was rescued, cancelled or finished) changes nothing.
A write that fails is dropped: progress is a hint, and the next report tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from jobq.errors import StoreUnavailable
from jobq.store import SqlStore
from jobq.types import Lease
from jobq.worker.db import Db

log = logging.getLogger("jobq.worker")

#: Fewest seconds between two progress writes of one job.
MIN_INTERVAL = 1.0


class ProgressReports:
    def __init__(self, store: SqlStore, db: Db, lease: Lease) -> None:
        self._store, self._db, self._lease = store, db, lease
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._latest: tuple[float, str | None] | None = None  # not written yet
        self._written_at = -MIN_INTERVAL
        self._writer: asyncio.Task[None] | None = None
        self._hurry = False  # the handler returned: write without waiting
        self._writing = False  # a write is under way

    def report(self, fraction: float, message: str | None) -> None:
        """Keep the report (checked by JobContext.progress); write it soon. Any thread."""
        with self._lock:
            self._latest = (fraction, message)
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._schedule()
        else:
            with contextlib.suppress(RuntimeError):  # the worker's loop has ended
                self._loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        # The report was kept before this runs, so a writer that is finishing sees it.
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write_soon())

    async def _write_soon(self) -> None:
        while True:
            if not self._hurry:
                await asyncio.sleep(max(0.0, self._written_at + MIN_INTERVAL - time.monotonic()))
            await self._write()
            with self._lock:
                if self._latest is None:
                    return

    async def _write(self) -> None:
        with self._lock:
            latest, self._latest = self._latest, None
        if latest is None:
            return
        self._written_at = time.monotonic()
        self._writing = True
        try:
            await self._db.call(self._store.set_progress, self._lease, *latest)
        except StoreUnavailable as exc:
            log.debug("job %s: progress not written: %s", self._lease.job_id, exc)
        finally:
            self._writing = False

    async def flush(self) -> None:
        """Write the latest report now, if one is waiting (the handler has returned): a
        writer already under way writes it without its pause; else it is written here."""
        if self._writer is None and self._latest is None:
            return  # the handler reported nothing (most jobs): no write, no await
        self._hurry = True
        writer = self._writer
        if writer is not None and not writer.done():
            if not self._writing:  # sleeping: write here instead
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await self._write()

    def drop(self) -> None:
        """Forget what is not written (the job was taken away, or is over)."""
        if self._writer is None and self._latest is None:
            return
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        with self._lock:
            self._latest = None
