"""One worker process: the parts composed, and its life cycle.

Start: register the worker, then run the loops (``loop.run_loop`` each): fetch, complete,
heartbeat, rescue, prune, schedule (when the task modules declare periodic jobs), and on
PostgreSQL the LISTEN that wakes the fetcher.

Stop (SIGTERM/SIGINT, or ``stop()``): claim nothing more, give running jobs
``shutdown_grace_seconds`` to finish, release the rest back to pending without charging the
attempt, write (or release) the outbox, deregister, exit 0. A second signal skips the rest of
the grace period. A loop that crashed stops the worker the same way, with exit code 1.

Restart: once JOBQ_MAX_ABANDONED_THREADS handler threads that timed out (or whose job was
taken away) still run, nothing can stop them but the end of the process: the worker stops as
above and ``run_worker`` starts it again as a fresh process (exec, same PID; under a
supervisor, exit code ``RESTART_EXIT_CODE``, and the supervisor starts a new one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from jobq import webhooks
from jobq.errors import StoreUnavailable
from jobq.metrics import serve_worker_metrics
from jobq.registry import TaskRegistry, load_registry
from jobq.settings import Settings
from jobq.store import SqlStore, open_store
from jobq.types import WorkerRegistration
from jobq.worker.completer import Completer
from jobq.worker.db import Db
from jobq.worker.executor import abandoned_threads, close_processes
from jobq.worker.fetcher import Fetcher
from jobq.worker.heartbeat import Heartbeat
from jobq.worker.loop import run_loop, sleep
from jobq.worker.maintenance import Maintenance
from jobq.worker.scheduler import Scheduler, declared
from jobq.worker.slots import Outbox, Slots

log = logging.getLogger("jobq.worker")

#: A worker that stopped to start afresh (abandoned threads): its supervisor restarts it.
RESTART_EXIT_CODE = 75


def new_worker_id() -> str:
    return f"{socket.gethostname()[:60]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Worker:
    store: SqlStore
    registry: TaskRegistry
    settings: Settings
    worker_id: str = field(default_factory=new_worker_id)
    queues: Sequence[str] | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        self.queues = list(self.queues or self.settings.queues)
        self.concurrency = self.concurrency or self.settings.concurrency
        self.registration = WorkerRegistration(
            self.worker_id, socket.gethostname(), os.getpid(), tuple(self.queues),
            self.concurrency,
        )
        store, settings = self.store, self.settings
        webhooks.configure(settings)  # the deliveries of jobq.webhook read theirs
        self.db = Db()
        self.outbox = Outbox()
        self.slots = Slots(self.concurrency, self.outbox)
        self.fetcher = Fetcher(store, self.db, self.slots, self.registry, settings,
                               self.worker_id, self.queues)
        self.completer = Completer(store, self.db, self.outbox, settings, self.slots.wake)
        self.heartbeat = Heartbeat(store, self.db, self.slots, settings, self.registration)
        self.maintenance = Maintenance(store, self.db, settings, self.slots.wake)
        self.scheduler = Scheduler(store, self.db, declared(self.registry, settings))
        self._stopping = asyncio.Event()  # stop claiming
        self._stopped = asyncio.Event()  # the other loops may end
        self._hurry = False  # a second signal: skip the rest of the grace period
        self.restart = False  # stopped to start afresh: too many abandoned threads

    async def watch_threads(self) -> float:
        """Stop to start afresh once too many abandoned handler threads still run."""
        limit = self.settings.max_abandoned_threads
        n = abandoned_threads()
        if limit and n >= limit and not self._stopping.is_set():
            log.warning("%d handler thread(s) abandoned after a timeout or a cancel still run "
                        "(JOBQ_MAX_ABANDONED_THREADS=%d): stopping to start afresh", n, limit)
            self.restart = True
            self.stop()
        return 1.0

    async def _expire(self) -> float:
        return self.slots.expire(time.monotonic())

    def stop(self) -> None:
        """Begin a graceful stop; a second call cuts the grace period short."""
        if self._stopping.is_set():
            self._hurry = True
            log.warning("second stop signal: releasing running jobs now")
        else:
            log.info("stopping: no new claims; %d job(s) running", len(self.slots))
        self._stopping.set()
        self.slots.wake.set()

    async def run(self) -> int:
        """Serve until stopped. Returns the process exit code."""
        self._handle_signals()
        await self._register()
        log.info("worker %s serving queues %s with concurrency %d",
                 self.worker_id, ",".join(self.queues or []), self.concurrency)
        fetcher = asyncio.create_task(run_loop("fetch", self.fetcher.fetch, self._stopping))
        side, listener = self._start_side_loops()
        stopping = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait([fetcher, stopping, *side], return_when="FIRST_COMPLETED")
        exit_code = 0
        for t in done:
            if t is not stopping and t.exception() is not None:
                log.critical("worker loop crashed; stopping", exc_info=t.exception())
                exit_code = 1
        self._stopping.set()
        await asyncio.gather(fetcher, return_exceptions=True)
        await self._drain()
        await self.completer.write_out(self._hurry)
        self._stopped.set()
        self.outbox.ready.set()
        if listener is not None:
            listener.cancel()  # it runs until cancelled
        for t, outcome in zip(side, await asyncio.gather(*side, return_exceptions=True)):
            if isinstance(outcome, Exception) and t not in done:  # died while stopping
                log.critical("worker loop crashed while stopping", exc_info=outcome)
                exit_code = 1
        stopping.cancel()
        close_processes()
        await self._deregister()
        self.db.close()
        log.info("worker %s stopped", self.worker_id)
        return exit_code

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass

    def _start_side_loops(self) -> tuple[list[asyncio.Task[None]], asyncio.Task[None] | None]:
        """The loops that go on while running jobs drain; and the listener among them."""
        until = self._stopped
        side = [asyncio.create_task(run_loop(name, body, until)) for name, body in (
            ("complete", self.completer.flush),
            ("rescue", self.maintenance.rescue),
            ("prune", self.maintenance.prune),
        )]
        side.append(asyncio.create_task(run_loop("threads", self.watch_threads,
                                                 self._stopping)))
        side.append(asyncio.create_task(run_loop(
            "timeouts", self._expire, until)))
        if self.settings.scheduler_enabled and self.scheduler.schedules:
            # Ends with the claims: a stopping worker enqueues nothing more.
            side.append(asyncio.create_task(
                run_loop("schedule", self.scheduler.run, self._stopping)))
        listening = (self.store.listen(self.queues or [], self.slots.wake.set, self.settings)
                     if self.settings.listen_enabled else None)
        listener = None
        if listening is not None:
            listener = asyncio.create_task(listening)
            side.append(listener)
        if self.settings.heartbeat_enabled:
            side.append(asyncio.create_task(run_loop("heartbeat", self.heartbeat.beat, until)))
            side.append(asyncio.create_task(run_loop("fence", self.heartbeat.fence, until)))
        else:
            log.warning("heartbeats are OFF (JOBQ_HEARTBEAT_ENABLED=false): long jobs will be "
                        "rescued while they run; use this only to test jobq itself")
        return side, listener

    async def _register(self) -> None:
        reg = self.registration
        while True:
            try:
                await self.db.call(self.store.register_worker, reg.id, reg.host, reg.pid,
                                   reg.queues, reg.concurrency)
                return
            except StoreUnavailable as exc:
                log.warning("cannot register worker yet: %s", exc)
                await sleep(1.0, self._stopping)
                if self._stopping.is_set():
                    return

    async def _deregister(self) -> None:
        try:
            await self.db.call(self.store.deregister_worker, self.worker_id)
        except StoreUnavailable as exc:
            log.warning("could not deregister (the row will be pruned): %s", exc)

    async def _drain(self) -> None:
        """Wait up to the grace period (less when hurried) for running jobs to finish; then
        release the rest back to pending without charging the attempt."""
        tasks = self.slots.tasks()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        while tasks and not self._hurry and time.monotonic() < deadline:
            self.slots.wake.clear()
            tasks = [t for t in tasks if not t.done()]
            if not tasks:
                break
            await sleep(min(0.1, max(deadline - time.monotonic(), 0)), self.slots.wake)
        leftovers = self.slots.release_unfinished()
        if not leftovers:
            return
        await asyncio.gather(*(r.task for r in leftovers if r.task), return_exceptions=True)
        leases = [r.claimed.lease for r in leftovers]
        try:
            n = await self.db.write(self.store.release, leases)
            log.info("released %d unfinished job(s) back to pending", n)
        except StoreUnavailable as exc:
            log.warning("could not release %d job(s); their leases will expire: %s",
                        len(leases), exc)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def run_worker(settings: Settings, *, worker_id: str | None = None,
               exec_restart: bool = True) -> int:
    """Entry point of one worker process: connect, migrate if asked, serve until stopped.
    A worker that stopped to start afresh (see the module's docstring) is started again by
    exec'ing this process's own command line (``exec_restart``), else exits with
    RESTART_EXIT_CODE for its supervisor to start another."""
    configure_logging(settings.log_level)
    registry = load_registry(settings.tasks)
    if settings.metrics_port is not None:
        serve_worker_metrics(settings.metrics_host, settings.metrics_port)
    store = open_store(settings)
    try:
        worker = Worker(store, registry, settings, worker_id=worker_id or new_worker_id())
        code = asyncio.run(worker.run())
    finally:
        store.dispose()
    if not (worker.restart and code == 0):
        return code
    if not exec_restart:
        return RESTART_EXIT_CODE
    log.warning("starting afresh: exec %s", " ".join(sys.orig_argv))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The abandoned threads end with this process image; the PID, and its supervisor, stay.
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
