"""Handlers of tasks with ``isolation="process"``: each attempt runs in a child process, which
the worker can really stop, where a thread can only be abandoned.

The children are fresh interpreters (multiprocessing "spawn": a fork of a worker with threads
and open connections would inherit locks held by other threads, and the connections). One
runs one attempt at a time, and is kept for the next once it is done: a pool that grows to as
many as run at once, of which at most ``MAX_IDLE`` wait idle, each replaced after
``MAX_JOBS_PER_CHILD`` attempts (recycled, so that a leaking handler cannot grow without
bound). A child imports the handler's module on first use and runs the handler there, classified
as in the worker (``executor.classified``), so the task must be declared with ``@task`` in
that module; the Outcome, and progress reports, come back over a
pipe.

An attempt the worker stops waiting for (its timeout, its job cancelled or its lease lost, a
shutdown past the grace period) ends its child: SIGTERM, then SIGKILL after ``KILL_GRACE``
seconds. A child that dies by itself fails the attempt (``ProcessDied``), like an error. A
child whose worker is gone stops itself.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from jobq.registry import JobContext
from jobq.retry import Backoff
from jobq.types import Failure, Outcome

log = logging.getLogger("jobq.worker")

_SPAWN = multiprocessing.get_context("spawn")
MAX_IDLE = 8
MAX_JOBS_PER_CHILD = 1000
KILL_GRACE = 2.0


class _Child:
    def __init__(self) -> None:
        self.conn, theirs = _SPAWN.Pipe()
        self.process = _SPAWN.Process(target=_child_main, args=(theirs, os.getpid()),
                                      name="jobq-handler-process", daemon=True)
        self.process.start()
        theirs.close()
        self.jobs = 0

    async def run(self, module: str, task_name: str, payload: Any, ctx: JobContext,
                  backoff: Backoff | None) -> Outcome:
        fields = {"job_id": ctx.job_id, "attempt": ctx.attempt,
                  "max_attempts": ctx.max_attempts, "queue": ctx.queue,
                  "task_type": ctx.task_type, "worker_id": ctx.worker_id,
                  "parents": ctx.parents}
        self.conn.send(("run", module, task_name, payload, fields, backoff))
        self.jobs += 1
        while True:
            message = await self._receive()
            if message[0] == "progress":
                if ctx.report is not None:
                    ctx.report(message[1], message[2])
                continue
            return message[1]

    async def _receive(self) -> Any:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = self.conn.fileno()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        return self.conn.recv()  # the child writes each message whole, at once

    def end(self) -> None:
        """Stop the child: SIGTERM now, SIGKILL after the grace period (reaped on a thread,
        so the event loop does not wait)."""
        self.conn.close()
        process = self.process
        if process.is_alive():
            process.terminate()

        def reap() -> None:
            process.join(KILL_GRACE)
            if process.is_alive():
                log.warning("handler process %s ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.join()

        threading.Thread(target=reap, name="jobq-reap", daemon=True).start()


class ProcessPool:
    def __init__(self) -> None:
        self._idle: list[_Child] = []
        self._pid = os.getpid()

    async def run(self, module: str, task_name: str, payload: Any, ctx: JobContext,
                  backoff: Backoff | None) -> Outcome:
        """One attempt of ``task_name`` (declared with ``@task`` in ``module``) in a child;
        cancelled, the child is ended."""
        if self._pid != os.getpid():  # a forked copy holds the parent's children: not ours
            self._idle, self._pid = [], os.getpid()
        child = self._idle.pop() if self._idle else _Child()
        try:
            outcome = await child.run(module, task_name, payload, ctx, backoff)
        except (EOFError, OSError):
            await asyncio.to_thread(child.process.join, KILL_GRACE)  # for its exit code
            child.end()
            code = child.process.exitcode
            return Failure(f"ProcessDied: the handler's process ended (exit code {code}) "
                           "before the attempt did", "")
        except BaseException:
            child.end()  # the worker stopped waiting: the handler must stop too
            raise
        if child.jobs >= MAX_JOBS_PER_CHILD or len(self._idle) >= MAX_IDLE:
            child.end()
        else:
            self._idle.append(child)
        return outcome

    def close(self) -> None:
        """End every idle child (at the worker's stop)."""
        idle, self._idle = self._idle, []
        for child in idle:
            child.end()


# -- In the child ------------------------------------------------------------------------------


def _child_main(conn: Connection, parent_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the worker decides what becomes of its jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    from jobq.registry import default_registry
    from jobq.worker.executor import classified

    importlib.import_module("jobq.builtin_tasks")
    while True:
        try:
            _, module, task_name, payload, fields, backoff = conn.recv()
        except (EOFError, OSError):
            return  # the worker closed the pipe (or is gone)
        try:
            importlib.import_module(module)
            task = default_registry.get(task_name)
            from jobq import payloads

            parsed = payloads.parsed(task.payload_model, payload)
        except Exception as exc:  # noqa: BLE001 - told to the worker as the attempt's failure
            conn.send(("outcome", Failure(f"{type(exc).__name__}: {exc}"[:4000], "")))
            continue
        ctx = JobContext(**fields, report=lambda f, m: conn.send(("progress", f, m)))
        outcome = asyncio.run(classified(task, parsed, ctx, backoff, inline=True))
        conn.send(("outcome", outcome))


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)  # the worker is gone: so is the attempt it would have written
