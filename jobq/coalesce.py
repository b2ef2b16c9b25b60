"""Group commit: concurrent single enqueues share one transaction.

Each enqueue on its own pays a whole transaction, and with fsync on the commit is most of that.
Here the callers of one process hand their job to one flusher thread and wait; the flusher
writes everything handed to it with one ``enqueue_many`` and wakes each caller once its job is
committed. There is no timer: a batch is whatever piled up while the previous commit ran, so a
lone caller is written at once, and batches grow with the load.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from jobq.errors import IdempotencyConflict, StoreUnavailable
from jobq.types import EnqueueResult, NewJob

log = logging.getLogger("jobq.coalesce")

#: Most jobs one group commit writes.
MAX_BATCH = 500


class _Waiter:
    """One caller's job, and the future its caller waits on (from a thread with
    ``result()``, or from an event loop through ``asyncio.wrap_future``)."""

    __slots__ = ("new", "future")

    def __init__(self, new: NewJob) -> None:
        self.new = new
        self.future: Future[EnqueueResult] = Future()

    @property
    def settled(self) -> bool:
        return self.future.done()

    def succeed(self, result: EnqueueResult) -> None:
        self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        self.future.set_exception(error)


class GroupCommit:
    """Enqueue jobs one at a time from many threads, written together.

    ``enqueue_many`` and ``enqueue`` are the store's: a batch is written with the first, all
    or nothing. When the database is unavailable (StoreUnavailable), every caller of that
    batch gets that error. One caller's idempotency conflict must not fail the others: its
    job is taken out, the rest is written again as a batch, and that job is then written
    alone, which gives its caller its own answer. After any other failure the batch's jobs
    are written one by one, so that each caller gets its own result or error.

    The flusher thread starts with the first job; ``close`` writes what is waiting, then
    stops it. Jobs enqueued after ``close`` are written directly, one transaction each.
    """

    def __init__(
        self,
        enqueue_many: Callable[[Sequence[NewJob]], list[EnqueueResult]],
        enqueue: Callable[[NewJob], EnqueueResult],
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._enqueue_many = enqueue_many
        self._enqueue = enqueue
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._waiting: deque[_Waiter] = deque()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    def enqueue(self, new: NewJob) -> EnqueueResult:
        """Write ``new``; returns once it is committed. Raises what ``enqueue`` would."""
        return self.submit(new).result()

    def submit(self, new: NewJob) -> Future[EnqueueResult]:
        """Hand ``new`` to the flusher; the future settles once it is committed (or failed).

        An event loop awaits it with ``asyncio.wrap_future`` and holds no thread meanwhile.
        After ``close`` the job is written here and now, and the future is already settled.
        """
        waiter = _Waiter(new)
        if self._pid != os.getpid():
            self._forked()
        with self._cond:
            closed = self._closed
            if not closed:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="jobq-group-commit", daemon=True
                    )
                    self._thread.start()
                self._waiting.append(waiter)
                self._cond.notify()
        if closed:
            try:
                waiter.succeed(self._enqueue(new))
            except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
                waiter.fail(exc)
        return waiter.future

    def close(self) -> None:
        """Write the jobs that wait, then stop the flusher. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _forked(self) -> None:
        # A forked child has the parent's state but not its thread (and maybe a lock that a
        # parent's thread held): start afresh.
        self._cond = threading.Condition()
        self._waiting = deque()
        self._thread = None
        self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return  # closed, and nothing is left to write
                batch = [
                    self._waiting.popleft()
                    for _ in range(min(self.max_batch, len(self._waiting)))
                ]
            try:
                self._flush(batch)
            except BaseException as exc:  # noqa: BLE001 - the flusher must never die
                log.exception("group commit failed")
                for waiter in batch:
                    if not waiter.settled:
                        waiter.fail(exc)

    def _flush(self, batch: list[_Waiter]) -> None:
        alone: list[_Waiter] = []  # written one by one once the others are
        while batch:
            try:
                results = self._enqueue_many([w.new for w in batch])
            except StoreUnavailable as exc:
                for waiter in batch + alone:
                    # One error object per caller: each raises it in its own thread.
                    error = StoreUnavailable(str(exc))
                    error.__cause__ = exc
                    waiter.fail(error)
                return
            except IdempotencyConflict as exc:
                if exc.index is None:
                    alone += batch
                    break
                # That job's own answer comes from writing it alone, after the others (an
                # earlier job of the batch with its key then holds it); the others go again.
                alone.append(batch.pop(exc.index))
                continue
            except Exception:  # noqa: BLE001 - whose it is, the jobs written alone will tell
                alone += batch
                break
            for waiter, result in zip(batch, results):
                waiter.succeed(result)
            break
        for waiter in alone:
            try:
                waiter.succeed(self._enqueue(waiter.new))
            except Exception as exc:  # noqa: BLE001 - handed to its caller
                waiter.fail(exc)
