"""The threads that run sync (``def``) handlers: daemon threads, reused from job to job.

Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one handler stuck in
a blocking call would keep a stopping worker alive for ever. These are daemon threads: one
still running when the worker has released its job simply dies with the process.

Reused rather than one per job, because starting a thread costs about as much as a whole
no-op job's share of the claim and the completion. A thread is started only when none is
idle, so there are never more than the handlers running at once (at most the worker's
concurrency, plus any handler abandoned while stuck); one idle for ``IDLE_SECONDS`` ends.

A handler is abandoned when the worker stops waiting for it (its timeout, its job cancelled
or its lease lost): nothing can stop a thread from outside, so it runs on until it returns,
and its result is dropped. ``abandoned()`` counts those still running; the worker restarts
itself past JOBQ_MAX_ABANDONED_THREADS (``worker.py``), so that they cannot pile up.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

#: How long a thread with nothing to run waits for work before it ends.
IDLE_SECONDS = 30.0

_Work = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], contextvars.Context,
              Callable[..., Any], tuple[Any, ...]]


class HandlerThreads:
    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._fresh()

    def _fresh(self) -> None:
        # (Again in a forked child: it has the parent's permits, but none of its threads.)
        self._pid = os.getpid()
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        # One permit per idle thread that no work has been promised to yet.
        self._idle = threading.Semaphore(0)
        self._started = 0
        # The future each busy thread works for, by thread id (single dict operations, which
        # the GIL keeps whole).
        self._busy: dict[int, asyncio.Future[Any]] = {}

    def abandoned(self) -> int:
        """How many threads still run a handler whose caller stopped waiting (cancelled)."""
        if self._pid != os.getpid():
            return 0
        return sum(1 for f in list(self._busy.values()) if f.cancelled())

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` on one of the threads; the future (of the running loop) settles with
        its result or exception, unless it was cancelled meanwhile. It runs in a copy of the
        caller's context (its contextvars: the run's trace span), as ``asyncio.to_thread``."""
        if self._pid != os.getpid():
            self._fresh()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._idle.acquire(blocking=False):  # nobody idle: one more thread
            # Started before the work is queued: if it cannot start, the caller gets the
            # error and the handler never runs.
            self._started += 1
            threading.Thread(target=self._serve, name=f"jobq-handler-{self._started}",
                             daemon=True).start()
        self._work.put((loop, future, contextvars.copy_context(), fn, args))
        return future

    def _serve(self) -> None:
        while True:
            try:
                loop, future, context, fn, args = self._work.get(timeout=self.idle_seconds)
            except queue.Empty:
                # End, unless work was promised to an idle thread meanwhile: then this
                # thread's permit is already taken, and the work is on its way.
                if self._idle.acquire(blocking=False):
                    return
                continue
            me = threading.get_ident()
            self._busy[me] = future
            try:
                ok, value = True, context.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop as the outcome
                ok, value = False, exc
            finally:
                self._busy.pop(me, None)
            # Idle before the caller hears of it: the next job, handed over as soon as it
            # does, then finds this thread rather than starting another.
            self._idle.release()
            _hand_back(loop, future, ok, value)
            # An idle thread must not keep the last job's objects (or an error's frames).
            del loop, future, context, fn, args, value


def _hand_back(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], ok: bool,
               value: Any) -> None:
    try:
        loop.call_soon_threadsafe(_settle, future, ok, value)
    except RuntimeError:
        pass  # the loop has closed: the worker is gone, and with it whoever waited


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # cancelled meanwhile (lease lost or shutdown)
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
