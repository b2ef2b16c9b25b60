"""Group commit: concurrent enqueues of one process share one transaction.

Each enqueue on its own pays a whole transaction, and with fsync on the commit is most of that.
Here the callers of one process hand their jobs (one, or a batch) to one flusher thread and
wait; the flusher writes everything handed to it with one ``enqueue_many`` and settles each
caller's future once its jobs are committed. There is no timer: a group is whatever piled up
while the previous commit ran, so groups grow with the load. One writer thread also means that
an API process's many requests do not fight over the GIL and the connection pool while they
write.

A caller from a plain thread (``enqueue``, ``enqueue_many``) that finds nothing being written
and nothing waiting writes its own jobs, in its own thread: a lone enqueue then costs one
round trip and no thread hop. Whoever writes, the others queue behind it and go as one group.
Event loops (``submit``) always hand over: they must never block on the database.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from jobq.errors import IdempotencyConflict, StoreUnavailable
from jobq.types import EnqueueResult, NewJob

log = logging.getLogger("jobq.coalesce")

#: Most jobs one group commit writes (a caller's batch is never split: a larger one is
#: written as a group of its own).
MAX_BATCH = 2000


class _Waiter:
    """One caller's jobs, and the future its caller waits on (from a thread with
    ``result()``, or from an event loop through ``asyncio.wrap_future``): an EnqueueResult
    for a single job, a list of them for a batch."""

    __slots__ = ("news", "single", "future")

    def __init__(self, news: Sequence[NewJob], single: bool) -> None:
        self.news = news
        self.single = single
        self.future: Future[Any] = Future()

    @property
    def settled(self) -> bool:
        return self.future.done()

    def take(self) -> bool:
        """Mark the jobs as being written, so the caller can no longer cancel; False when it
        already has (an awaiting task that was cancelled cancels this future too): those
        jobs are then not written, and their caller never hears of them."""
        return self.future.set_running_or_notify_cancel()

    def succeed(self, results: list[EnqueueResult]) -> None:
        self.future.set_result(results[0] if self.single else results)

    def fail(self, error: BaseException) -> None:
        self.future.set_exception(error)


class GroupCommit:
    """Enqueue jobs from many threads, written together.

    ``enqueue_many`` and ``enqueue`` are the store's: a group is written with the first, all
    or nothing. When the database is unavailable (StoreUnavailable), every caller of that
    group gets that error. One caller's idempotency conflict must not fail the others: its
    jobs are taken out, the rest is written again as a group, and that caller's jobs are
    then written alone, which gives it its own answer (for a batch, with the index of the
    item within that batch). After any other failure each caller's jobs are written alone,
    so that each caller gets its own result or error.

    The flusher thread starts with the first job; ``close`` writes what is waiting, then
    stops it. Jobs enqueued after ``close`` are written directly, one transaction per call.
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
        self._writing = False  # a group (the flusher's, or a caller's own) is being written

    def enqueue(self, new: NewJob) -> EnqueueResult:
        """Write ``new``; returns once it is committed. Raises what ``enqueue`` would."""
        result: EnqueueResult = self._wait(_Waiter([new], single=True))
        return result

    def enqueue_many(self, news: Sequence[NewJob]) -> list[EnqueueResult]:
        """``enqueue`` for a batch, all or nothing; its results in input order."""
        if not news:
            return []
        results: list[EnqueueResult] = self._wait(_Waiter(list(news), single=False))
        return results

    def _wait(self, waiter: _Waiter) -> Any:
        """From a thread that may block: write ``waiter`` here when nobody else is writing,
        else queue it for the flusher; either way, return its result once committed."""
        if self._pid != os.getpid():
            self._forked()
        with self._cond:
            inline = not (self._closed or self._writing or self._waiting)
            if inline:
                self._writing = True
        if not inline:
            return self._submit(waiter).result()
        try:
            waiter.take()
            self._flush([waiter])
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()  # for those queued behind this write, or close()
        return waiter.future.result()

    def submit(self, new: NewJob) -> Future[EnqueueResult]:
        """Hand ``new`` to the flusher; the future settles once it is committed (or failed).

        An event loop awaits it with ``asyncio.wrap_future`` and holds no thread meanwhile.
        After ``close`` the job is written here and now, and the future is already settled.
        """
        return self._submit(_Waiter([new], single=True))

    def submit_many(self, news: Sequence[NewJob]) -> Future[list[EnqueueResult]]:
        """``submit`` for a batch, written all or nothing: the future settles with its
        results in input order, or with the error ``enqueue_many`` would raise for it."""
        if not news:
            done: Future[list[EnqueueResult]] = Future()
            done.set_result([])
            return done
        return self._submit(_Waiter(list(news), single=False))

    def _submit(self, waiter: _Waiter) -> Future[Any]:
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
        if closed and waiter.take():
            self._write_alone(waiter)
        return waiter.future

    def close(self) -> None:
        """Write the jobs that wait (and wait for a caller's own write in flight), then stop
        the flusher. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread if self._pid == os.getpid() else None
            if thread is None and self._pid == os.getpid():
                # No flusher: only a caller's own write can be in flight. (A flusher, joined
                # below, waits for that write itself before it ends.)
                self._cond.wait_for(lambda: not self._writing)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _forked(self) -> None:
        # A forked child has the parent's state but not its thread (and maybe a lock that a
        # parent's thread held): start afresh.
        self._cond = threading.Condition()
        self._waiting = deque()
        self._thread = None
        self._pid = os.getpid()
        self._writing = False

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._writing or (not self._waiting and not self._closed):
                    self._cond.wait()
                if not self._waiting:
                    return  # closed, and nothing is left to write
                self._writing = True
                group, size = [], 0
                while self._waiting and (
                    not group or size + len(self._waiting[0].news) <= self.max_batch
                ):
                    waiter = self._waiting.popleft()
                    if waiter.take():
                        group.append(waiter)
                        size += len(waiter.news)
            try:
                if group:  # else every one of them was cancelled
                    self._flush(group)
            except BaseException as exc:  # noqa: BLE001 - the flusher must never die
                log.exception("group commit failed")
                for waiter in group:
                    if not waiter.settled:
                        waiter.fail(exc)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def _flush(self, group: list[_Waiter]) -> None:
        alone: list[_Waiter] = []  # written one by one once the others are
        while group:
            try:
                results = self._enqueue_many([new for w in group for new in w.news])
            except StoreUnavailable as exc:
                for waiter in group + alone:
                    # One error object per caller: each raises it in its own thread.
                    error = StoreUnavailable(str(exc))
                    error.__cause__ = exc
                    waiter.fail(error)
                return
            except IdempotencyConflict as exc:
                if exc.index is None:
                    alone += group
                    break
                # That caller's own answer comes from writing its jobs alone, after the
                # others (an earlier job of the group with its key then holds it); the
                # others go again.
                alone.append(group.pop(_owner(group, exc.index)))
                continue
            except Exception:  # noqa: BLE001 - whose it is, the jobs written alone will tell
                alone += group
                break
            start = 0
            for waiter in group:
                waiter.succeed(results[start:start + len(waiter.news)])
                start += len(waiter.news)
            break
        for waiter in alone:
            self._write_alone(waiter)

    def _write_alone(self, waiter: _Waiter) -> None:
        try:
            if waiter.single:
                waiter.succeed([self._enqueue(waiter.news[0])])
            else:
                waiter.succeed(self._enqueue_many(waiter.news))
        except Exception as exc:  # noqa: BLE001 - handed to its caller
            waiter.fail(exc)


def _owner(group: list[_Waiter], index: int) -> int:
    """The position in ``group`` of the waiter whose jobs hold item ``index`` of the group."""
    for position, waiter in enumerate(group):
        if index < len(waiter.news):
            return position
        index -= len(waiter.news)
    raise IndexError("no waiter holds that item")
