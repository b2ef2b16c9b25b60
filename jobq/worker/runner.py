"""One worker process: asyncio all the way, with the store's blocking calls on a small thread pool.

Loops (each has the same shape: run, sleep an interruptible jittered interval, repeat; a loop
that crashes stops the worker loudly with exit code 1):

- fetch:     claims at most as many jobs as there are free slots (invariant 6); it sleeps until
             a slot frees, a notification arrives (PostgreSQL LISTEN) or a poll interval passes
- complete:  writes finished jobs' outcomes, all successes that piled up in one statement; a
             handler's slot frees as soon as it returns, not when its outcome is written
- heartbeat: extends the leases of running and not-yet-written jobs; a job whose lease is gone
             is taken away from its handler, and its late writes would be refused by the store
             anyway (fencing)
- rescue:    moves jobs whose lease expired (dead or frozen workers) back to pending or failed
- prune:     forgets silent workers; deletes finished jobs older than the retention period
             (one process at a time)
- listen:    (PostgreSQL) wakes the fetcher when jobs are enqueued; polling is the fallback

Stopping (SIGTERM/SIGINT): claim nothing more, give running jobs ``shutdown_grace_seconds`` to
finish, release the rest back to pending without charging the attempt, deregister, exit 0.
A second signal skips the rest of the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jobq.errors import StoreUnavailable
from jobq.registry import JobContext, TaskRegistry, load_registry
from jobq.retry import Backoff
from jobq.settings import Settings
from jobq.store import SqlStore, open_store
from jobq.types import (
    ClaimedJob,
    Failure,
    JobState,
    Lease,
    Outcome,
    Success,
    WorkerRegistration,
)
from jobq.worker.executor import execute

log = logging.getLogger("jobq.worker")

T = TypeVar("T")


def jittered(seconds: float, spread: float = 0.2) -> float:
    """Up to 20 % less than ``seconds``, so that many workers do not poll in lockstep, while a
    configured interval stays an upper bound (the recovery bound counts on the rescue
    interval)."""
    return seconds * (1 - random.uniform(0, spread))


def new_worker_id() -> str:
    return f"{socket.gethostname()[:60]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Running:
    claimed: ClaimedJob
    task: asyncio.Task[None] | None = None
    lost: bool = False  # the lease is gone: the outcome must not be written
    released: bool = False  # given back at shutdown


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
        self.backoff = Backoff(self.settings.backoff_base_seconds, self.settings.backoff_cap_seconds)
        self._running: dict[str, Running] = {}  # executing, by lease token: the slots
        self._outbox: dict[str, tuple[Lease, Outcome]] = {}  # finished, outcome not written
        self._writing: set[str] = set()  # tokens of the outbox batch being written now
        self._outbox_ready = asyncio.Event()
        # The heartbeat and the outcome writes of one worker lock the same rows, in whatever
        # order each statement's plan takes them; run at the same time they could deadlock
        # (PostgreSQL aborts one, a stall of about a second). One at a time, they cannot.
        # The heartbeat waits at most one heartbeat interval for its turn, though: a write
        # that hangs must not let the leases of the running jobs expire.
        self._lease_writes = asyncio.Lock()
        self._failing_since: float | None = None  # when writing the outbox began to fail
        self._db = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jobq-db")
        self._stopping = asyncio.Event()  # stop claiming
        self._stopped = asyncio.Event()  # side loops may end
        self._wake = asyncio.Event()  # a slot freed, jobs rescued, or stopping: fetch now
        self._hurry = False  # a second signal: skip the rest of the grace period
        self._last_heartbeat_ok = time.monotonic()
        self.registration = WorkerRegistration(
            self.worker_id, socket.gethostname(), os.getpid(), tuple(self.queues),
            self.concurrency,
        )

    # -- plumbing -----------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(fn, *args))

    async def _sleep(self, seconds: float, until: asyncio.Event) -> None:
        """Sleep that ``until`` interrupts."""
        try:
            await asyncio.wait_for(until.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _loop(
        self, name: str, body: Callable[[], Awaitable[float]], until: asyncio.Event
    ) -> None:
        """Run ``body`` until ``until`` is set; body returns how long to sleep next.

        A database that is down is weathered (logged, retried); any other error ends the loop
        with that error, and ``run`` then stops the worker with exit code 1.
        """
        failures = 0
        while not until.is_set():
            try:
                pause = await body()
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                pause = min(0.1 * 2**failures, 5.0)
                log.warning("%s: database unavailable (try %d): %s", name, failures, exc)
            await self._sleep(jittered(pause), until)

    def stop(self) -> None:
        """Begin a graceful stop; a second call cuts the grace period short."""
        if self._stopping.is_set():
            self._hurry = True
            self._wake.set()
            log.warning("second stop signal: releasing running jobs now")
        else:
            log.info("stopping: no new claims; %d job(s) running", len(self._running))
        self._stopping.set()
        self._wake.set()

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped. Returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        await self._register()
        log.info(
            "worker %s serving queues %s with concurrency %d",
            self.worker_id, ",".join(self.queues or []), self.concurrency,
        )
        fetcher = asyncio.create_task(self._loop("fetch", self._fetch, self._stopping))
        side = [
            asyncio.create_task(self._loop("complete", self._flush, self._stopped)),
            asyncio.create_task(self._loop("rescue", self._rescue, self._stopped)),
        ]
        side.append(asyncio.create_task(self._loop("prune", self._prune, self._stopped)))
        listening = (self.store.listen(self.queues or [], self._wake.set)
                     if self.settings.listen_enabled else None)
        listener = None
        if listening is not None:
            listener = asyncio.create_task(listening)
            side.append(listener)
        if self.settings.heartbeat_enabled:
            side.append(
                asyncio.create_task(self._loop("heartbeat", self._heartbeat, self._stopped))
            )
        else:
            log.warning("heartbeats are OFF (JOBQ_HEARTBEAT_ENABLED=false): long jobs will be "
                        "rescued while they run; use this only to test jobq itself")
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
        await self._write_outbox()
        self._stopped.set()
        self._outbox_ready.set()
        if listener is not None:
            listener.cancel()  # it runs until cancelled
        for t, outcome in zip(side, await asyncio.gather(*side, return_exceptions=True)):
            if isinstance(outcome, Exception) and t not in done:  # died while stopping
                log.critical("worker loop crashed while stopping", exc_info=outcome)
                exit_code = 1
        stopping.cancel()
        await self._deregister()
        self._db.shutdown(wait=False)
        log.info("worker %s stopped", self.worker_id)
        return exit_code

    async def _register(self) -> None:
        reg = self.registration
        while True:
            try:
                await self._call(
                    self.store.register_worker, reg.id, reg.host, reg.pid, reg.queues,
                    reg.concurrency,
                )
                return
            except StoreUnavailable as exc:
                log.warning("cannot register worker yet: %s", exc)
                await self._sleep(1.0, self._stopping)
                if self._stopping.is_set():
                    return

    async def _deregister(self) -> None:
        try:
            await self._call(self.store.deregister_worker, self.worker_id)
        except StoreUnavailable as exc:
            log.warning("could not deregister (the row will be pruned): %s", exc)

    async def _drain(self) -> None:
        tasks = [r.task for r in self._running.values() if r.task is not None]
        grace = self.settings.shutdown_grace_seconds
        deadline = time.monotonic() + grace
        while tasks and not self._hurry and time.monotonic() < deadline:
            self._wake.clear()
            tasks = [t for t in tasks if not t.done()]
            if not tasks:
                break
            await self._sleep(min(0.1, max(deadline - time.monotonic(), 0)), self._wake)
        leftovers = [r for r in self._running.values() if r.task is not None and not r.task.done()]
        if not leftovers:
            return
        for r in leftovers:
            r.released = True
            r.task.cancel()  # type: ignore[union-attr]
        await asyncio.gather(*(r.task for r in leftovers), return_exceptions=True)  # type: ignore[misc]
        leases = [r.claimed.lease for r in leftovers]
        try:
            async with self._lease_writes:
                n = await self._call(self.store.release, leases)
            log.info("released %d unfinished job(s) back to pending", n)
        except StoreUnavailable as exc:
            log.warning("could not release %d job(s); their leases will expire: %s",
                        len(leases), exc)

    # -- fetch, execute, complete ------------------------------------------------------------

    async def _fetch(self) -> float:
        """Claim up to the free slots; then wait for a wake-up (a slot freed, jobs rescued) or,
        when the queue looked empty, at most one poll interval. Returns 0: it sleeps itself."""
        self._wake.clear()  # before counting, so a slot freed from now on wakes us
        # Outcomes not yet written count once the outbox holds more than a slot's worth each:
        # claims may run ahead of writes by one batch, never without bound.
        backlog = max(0, len(self._outbox) - (self.concurrency or 0))
        free = (self.concurrency or 0) - len(self._running) - backlog
        if free <= 0:
            # Full: wait for a slot rather than poll.
            await self._sleep(self.settings.poll_interval_seconds, self._wake)
            return 0.0
        claimed = await self._call(
            self.store.claim, self.worker_id, self.queues, free, self.settings.lease_seconds
        )
        for c in claimed:
            self._start(c)
        if len(claimed) < free:
            # The queue is (for now) empty: poll again later, sooner when woken.
            await self._sleep(jittered(self.settings.poll_interval_seconds), self._wake)
        return 0.0

    def _start(self, claimed: ClaimedJob) -> None:
        running = Running(claimed)
        self._running[claimed.lease.token] = running
        running.task = asyncio.create_task(self._work(running), name=f"job-{claimed.job.id}")

    async def _work(self, running: Running) -> None:
        claimed = running.claimed
        job, lease = claimed.job, claimed.lease
        try:
            task = self.registry.get(job.task_type)
        except Exception as exc:  # noqa: BLE001 - unknown here: a worker without that handler
            outcome: Outcome = Failure(f"{type(exc).__name__}: {exc}", "")
        else:
            ctx = JobContext(
                job_id=job.id, attempt=lease.attempt, max_attempts=lease.max_attempts,
                queue=job.queue, task_type=job.task_type, worker_id=self.worker_id,
            )
            try:
                outcome = await execute(task, job.payload, ctx)
            except asyncio.CancelledError:
                if not (running.lost or running.released):
                    raise
                outcome = None  # type: ignore[assignment]
        if outcome is not None and not running.lost and not running.released:
            self._outbox[lease.token] = (lease, outcome)
            self._outbox_ready.set()
        self._running.pop(lease.token, None)
        self._wake.set()

    # -- writing outcomes ---------------------------------------------------------------------

    #: Most outcomes written by one statement.
    BATCH = 1000

    async def _flush(self) -> float:
        """Write what the outbox holds: successes in one guarded statement, failures one by one
        (each decides retry or failed). While a write is in flight new outcomes pile up, so the
        batch grows with the load and no delay is added. A database that is down leaves the
        outbox as it is; the loop retries (and the heartbeat keeps the leases meanwhile). A
        batch that cannot be written for two leases is given up: its leases are no longer
        renewed, so rescue runs those jobs again, as it would after a crash."""
        if not self._outbox:
            self._outbox_ready.clear()
            await self._sleep(self.settings.poll_interval_seconds, self._outbox_ready)
            return 0.0
        batch = list(self._outbox.items())[: self.BATCH]
        self._writing = {token for token, _ in batch}
        try:
            successes = [(lease, o.result) for lease, o in (v for _, v in batch)
                         if isinstance(o, Success)]
            if successes:
                async with self._lease_writes:
                    taken = await self._call(self.store.complete_many, successes)
                for lease, _ in successes:
                    self._outbox.pop(lease.token, None)
                    if lease.token not in taken:
                        log.warning("job %s: lease lost before completion; result discarded",
                                    lease.job_id)
            for lease, outcome in (v for _, v in batch):
                if isinstance(outcome, Failure):
                    await self._write_failure(lease, outcome)
                    self._outbox.pop(lease.token, None)
            self._failing_since = None
        except StoreUnavailable:
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            elif now - self._failing_since > 2 * self.settings.lease_seconds:
                self._failing_since = None
                for token, (lease, _) in batch:
                    if self._outbox.pop(token, None) is not None:
                        log.error("job %s: giving up writing its outcome; its lease will "
                                  "expire and it will run again", lease.job_id)
            raise
        finally:
            self._writing = set()
            self._wake.set()  # a backlog that held claims back may have cleared
        return 0.0

    async def _write_failure(self, lease: Lease, outcome: Failure) -> None:
        delay = self.backoff.delay(lease.attempt)
        async with self._lease_writes:
            state = await self._call(
                self.store.fail, lease, outcome.error, outcome.traceback, delay
            )
        if state is None:
            log.warning("job %s: lease lost before its failure was recorded", lease.job_id)
        elif state is JobState.FAILED:
            log.info("job %s failed for good after %d attempt(s): %s",
                     lease.job_id, lease.attempt, outcome.error)
        else:
            log.info("job %s attempt %d failed, retrying in %.2fs: %s",
                     lease.job_id, lease.attempt, delay, outcome.error)

    async def _write_outbox(self) -> None:
        """At shutdown: give the complete loop a few seconds (one try when hurried) to write
        what is left, then release what it could not write, like an unfinished job: the
        attempt is not charged and the job runs again. The guarded release refuses any that
        were written after all. If even that fails, the leases expire and rescue takes over."""
        deadline = time.monotonic() + (0.5 if self._hurry else 5.0)
        while self._outbox and time.monotonic() < deadline:
            self._outbox_ready.set()
            await asyncio.sleep(0.02)
        if not self._outbox:
            return
        leases = [lease for lease, _ in self._outbox.values()]
        try:
            async with self._lease_writes:
                n = await self._call(self.store.release, leases)
            log.warning("%d finished job(s) could not be written; %d released to run again",
                        len(leases), n)
        except StoreUnavailable as exc:
            log.warning("%d finished job(s) not written; they will run again after their "
                        "leases expire: %s", len(leases), exc)

    # -- leases -------------------------------------------------------------------------------

    async def _heartbeat(self) -> float:
        try:
            async with self._turn(self.settings.heartbeat_seconds):
                tokens = [*self._running, *self._outbox]  # after any write in flight ended
                valid = await self._call(
                    functools.partial(self.store.heartbeat, registration=self.registration),
                    self.worker_id, tokens, self.settings.lease_seconds,
                )
        except StoreUnavailable:
            if time.monotonic() - self._last_heartbeat_ok > self.settings.lease_seconds:
                self._lose(list(self._running), "no heartbeat got through for a whole lease")
            raise
        self._last_heartbeat_ok = time.monotonic()
        gone = [t for t in tokens if t not in valid]
        self._lose(gone, "lease lost (rescued or cancelled)")
        for token in gone:
            # Unless being written right now (then the write may have made it, and the guarded
            # write settles it), a finished job whose lease is gone is not written at all.
            if token in self._outbox and token not in self._writing:
                lease, _ = self._outbox.pop(token)
                log.warning("job %s: lease lost before its outcome was written; discarded",
                            lease.job_id)
        return self.settings.heartbeat_seconds

    @contextlib.asynccontextmanager
    async def _turn(self, patience: float) -> AsyncIterator[None]:
        """``_lease_writes``, waited for at most ``patience`` seconds; then without it."""
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

    def _lose(self, tokens: Sequence[str], why: str) -> None:
        for token in tokens:
            running = self._running.get(token)
            if running is None or running.lost or running.released:
                continue
            running.lost = True
            log.warning("job %s: %s; stopping its handler", running.claimed.job.id, why)
            if running.task is not None:
                running.task.cancel()

    async def _rescue(self) -> float:
        rescued = await self._call(self.store.rescue)
        for job in rescued:
            log.warning("rescued job %s (lease expired) -> %s", job.id, job.state)
        if any(job.state is JobState.PENDING for job in rescued):
            self._wake.set()  # claim them now if a slot is free, not at the next poll
        return self.settings.rescue_interval_seconds

    async def _prune(self) -> float:
        """Maintenance: forget workers silent for ten leases; delete finished jobs past the
        retention period (JOBQ_RETENTION_SECONDS=0 keeps them)."""
        await self._call(self.store.prune_workers, 10 * self.settings.lease_seconds)
        if self.settings.retention_seconds <= 0:
            return self.settings.prune_interval_seconds
        deleted = await self._call(self.store.prune_finished, self.settings.retention_seconds)
        if deleted:
            log.info("pruned %d finished job(s) older than %.0fs", deleted,
                     self.settings.retention_seconds)
        # A full batch means more are due: go on soon, but leave the database room to breathe.
        return 1.0 if deleted == self.store.PRUNE_BATCH else self.settings.prune_interval_seconds


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def run_worker(settings: Settings, *, worker_id: str | None = None) -> int:
    """Entry point of one worker process: connect, migrate if asked, serve until stopped."""
    configure_logging(settings.log_level)
    registry = load_registry(settings.tasks)
    store = open_store(settings)
    try:
        worker = Worker(store, registry, settings, worker_id=worker_id or new_worker_id())
        return asyncio.run(worker.run())
    finally:
        store.dispose()
