"""What one worker holds at any moment, and who may take what from it: the jobs running in its
slots, and the finished jobs whose outcomes are not written yet (the outbox).

Every loop of the worker shares these two objects; they are the only state the loops share,
and they change only through the methods below, all called on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from jobq.registry import StopFlag
from jobq.types import ClaimedJob, Lease, Outcome

log = logging.getLogger("jobq.worker")


def fence_at(renewed_from: float, lease_seconds: float) -> float:
    """When a handler whose lease was renewed from ``renewed_from`` (monotonic) must stop,
    unless a beat renews it first: a margin before the earliest moment its lease can expire on
    the database's clock (for clocks that run at slightly different rates, and for the stop
    itself)."""
    return renewed_from + lease_seconds - min(1.0, lease_seconds / 10)


@dataclass
class Running:
    claimed: ClaimedJob
    #: By this process's monotonic clock, a moment no later than the start of the lease's
    #: current term: when the claim, or the last heartbeat that renewed it, was sent. The
    #: lease runs at least until then plus its length (the server started it later).
    renewed_from: float
    task: asyncio.Task[None] | None = None
    #: The handler's ``ctx.stopped``: set whenever its task is cancelled by the worker.
    stopped: StopFlag = field(default_factory=StopFlag)
    lost: bool = False  # the lease is gone: the outcome must not be written
    released: bool = False  # given back at shutdown
    #: Its timeout (seconds, None: none) and when it runs out (monotonic); set once its
    #: handler was stopped for it, which makes the outcome a timed-out failure.
    timeout: float | None = None
    deadline: float = float("inf")
    timed_out: bool = False

    @property
    def taken_away(self) -> bool:
        """Its handler was cancelled by the worker (lease lost, or shutdown), not by a bug."""
        return self.lost or self.released


class Outbox:
    """Finished jobs whose outcomes are not written yet, by lease token.

    A handler's slot frees as soon as it returns, not when its outcome is written: the outbox
    is where the outcome waits meanwhile, its lease still renewed by the heartbeat.
    """

    def __init__(self) -> None:
        self._outcomes: dict[str, tuple[Lease, Outcome]] = {}
        self._writing: set[str] = set()  # tokens of the batch being written right now
        self.ready = asyncio.Event()  # something to write (or: stopping, look again)

    def __len__(self) -> int:
        return len(self._outcomes)

    def tokens(self) -> list[str]:
        return list(self._outcomes)

    def leases(self) -> list[Lease]:
        return [lease for lease, _ in self._outcomes.values()]

    def put(self, lease: Lease, outcome: Outcome) -> None:
        self._outcomes[lease.token] = (lease, outcome)
        self.ready.set()

    def start_batch(self, limit: int) -> list[tuple[Lease, Outcome]]:
        """The oldest ``limit`` outcomes, marked as being written until ``end_batch``."""
        batch = list(self._outcomes.values())[:limit]
        self._writing = {lease.token for lease, _ in batch}
        return batch

    def end_batch(self) -> None:
        self._writing = set()

    def discard(self, token: str) -> bool:
        """Forget one outcome (written, or given up); False when it was not here."""
        return self._outcomes.pop(token, None) is not None

    def drop_lost(self, tokens: Collection[str]) -> list[Lease]:
        """Forget the outcomes of jobs whose lease is gone, and return their leases; except
        those being written right now: that write may have made it, and the fenced write
        settles it either way."""
        dropped = []
        for token in tokens:
            if token in self._outcomes and token not in self._writing:
                dropped.append(self._outcomes.pop(token)[0])
        return dropped


class Slots:
    """The jobs this worker runs now, by lease token, at most ``concurrency`` of them."""

    def __init__(self, concurrency: int, outbox: Outbox) -> None:
        self.concurrency = concurrency
        self.outbox = outbox
        self._running: dict[str, Running] = {}
        self.wake = asyncio.Event()  # a slot freed, jobs rescued, or stopping: fetch now
        #: Monotonic send time of the last heartbeat that got through (start: now).
        self.beat_confirmed = time.monotonic()

    def __len__(self) -> int:
        return len(self._running)

    def tokens(self) -> list[str]:
        return list(self._running)

    def live_tokens(self) -> list[str]:
        """The tokens of the handlers not taken away: the leases worth renewing (a handler
        stopped by a fence may take a moment to return; its lease must lapse meanwhile)."""
        return [t for t, r in self._running.items() if not r.taken_away]

    def free(self) -> int:
        """How many jobs may be claimed now.

        Outcomes not yet written count once the outbox holds more than a slot's worth each:
        claims may run ahead of writes by one batch, never without bound.
        """
        backlog = max(0, len(self.outbox) - self.concurrency)
        return self.concurrency - len(self._running) - backlog

    def add(self, claimed: ClaimedJob, sent: float) -> Running:
        running = Running(claimed, sent)
        self._running[claimed.lease.token] = running
        return running

    def finish(self, token: str) -> None:
        """The job's handler is done (or was taken away): its slot is free."""
        self._running.pop(token, None)
        self.wake.set()

    def lose(self, tokens: Collection[str], why: str) -> None:
        """The leases of ``tokens`` are gone: stop their handlers; nothing of theirs is
        written."""
        for token in tokens:
            running = self._running.get(token)
            if running is None or running.taken_away:
                continue
            running.lost = True
            running.stopped.set()
            log.warning("job %s: %s; stopping its handler", running.claimed.job.id, why)
            if running.task is not None:
                running.task.cancel()

    def expire(self, now: float) -> float:
        """Stop the handlers past their deadline (``Running.timed_out``); return how long
        until the next deadline, at most a second (a tenth of a second while a job with a
        timeout under ten seconds runs, so that short timeouts stay close)."""
        upcoming = 1.0
        for r in self._running.values():
            if r.timed_out or r.taken_away or r.task is None:
                continue
            if r.deadline <= now:
                r.timed_out = True
                r.stopped.set()  # a def handler that looks at it may stop by itself
                log.warning("job %s: past its timeout of %gs; stopping its handler",
                            r.claimed.job.id, r.timeout)
                r.task.cancel()
            else:
                upcoming = min(upcoming, r.deadline - now,
                               0.1 if (r.timeout or 10) < 10 else 1.0)
        return max(0.01, upcoming)

    def renewed(self, tokens: Collection[str], sent: float) -> None:
        """A heartbeat sent at ``sent`` renewed the leases of ``tokens``."""
        for token in tokens:
            running = self._running.get(token)
            if running is not None:
                running.renewed_from = max(running.renewed_from, sent)

    def running(self) -> list[Running]:
        return list(self._running.values())

    def tasks(self) -> list[asyncio.Task[None]]:
        return [r.task for r in self._running.values() if r.task is not None]

    def release_unfinished(self) -> list[Running]:
        """At shutdown: cancel the handlers still running, marked as released (so their
        cancellation is not an error and nothing of theirs is written); return them."""
        leftovers = [r for r in self._running.values()
                     if r.task is not None and not r.task.done()]
        for r in leftovers:
            r.released = True
            r.stopped.set()
            r.task.cancel()  # type: ignore[union-attr]
        return leftovers
