"""How finished jobs' outcomes get written: the outbox, emptied in batches.

Successes go in one statement per batch (``store.complete_many``), the rest one by one:
failures (``store.fail``: each decides retry with backoff, or failed for good), snoozes
(``store.snooze``) and handlers' cancellations (``store.cancel_running``); every row is still
fenced by its lease token, so an outcome whose lease was lost meanwhile changes nothing. While
a write is in flight new outcomes pile up, so the batch grows with the load and no delay is
added.

A database that is down leaves the outbox as it is; the loop retries, and the heartbeat keeps
the leases meanwhile. A batch that cannot be written for two leases is given up: its leases are
no longer renewed, so rescue runs those jobs again, as it would after a crash.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from jobq.errors import StoreUnavailable
from jobq.retry import Backoff
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.types import (
    AttemptOutcome,
    Cancelled,
    Failure,
    JobState,
    Lease,
    Outcome,
    Snoozed,
    Success,
)
from jobq.worker.db import Db
from jobq.worker.loop import sleep
from jobq.worker.slots import Outbox

log = logging.getLogger("jobq.worker")

#: Most outcomes written by one statement.
BATCH = 1000


@dataclass
class Completer:
    store: SqlStore
    db: Db
    outbox: Outbox
    settings: Settings
    wake: asyncio.Event  # the fetcher's: a backlog that held claims back may have cleared
    backoff: Backoff = field(init=False)
    failing_since: float | None = field(default=None, init=False)  # when writes began to fail

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.settings.backoff_base_seconds,
                               self.settings.backoff_cap_seconds)

    async def flush(self) -> float:
        """Write one batch of what the outbox holds; with nothing to write, wait for some."""
        if not len(self.outbox):
            self.outbox.ready.clear()
            await sleep(self.settings.poll_interval_seconds, self.outbox.ready)
            return 0.0
        batch = self.outbox.start_batch(BATCH)
        try:
            await self._write(batch)
            self.failing_since = None
        except StoreUnavailable:
            self._maybe_give_up(batch)
            raise
        finally:
            self.outbox.end_batch()
            self.wake.set()
        return 0.0

    async def _write(self, batch: Sequence[tuple[Lease, Outcome]]) -> None:
        successes = [(lease, o.result) for lease, o in batch if isinstance(o, Success)]
        if successes:
            taken = await self.db.write(self.store.complete_many, successes)
            for lease, _ in successes:
                self.outbox.discard(lease.token)
                if lease.token not in taken:
                    log.warning("job %s: lease lost before completion; result discarded",
                                lease.job_id)
        for lease, outcome in batch:
            if isinstance(outcome, Failure):
                await self._write_failure(lease, outcome)
            elif isinstance(outcome, Snoozed):
                await self._write_snooze(lease, outcome)
            elif isinstance(outcome, Cancelled):
                await self._write_cancel(lease, outcome)
            else:
                continue
            self.outbox.discard(lease.token)

    def _maybe_give_up(self, batch: Sequence[tuple[Lease, Outcome]]) -> None:
        """After two leases of failing writes, forget the batch (see the module's docstring)."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            return
        if now - self.failing_since <= 2 * self.settings.lease_seconds:
            return
        self.failing_since = None
        for lease, _ in batch:
            if self.outbox.discard(lease.token):
                log.error("job %s: giving up writing its outcome; its lease will "
                          "expire and it will run again", lease.job_id)

    async def _write_failure(self, lease: Lease, outcome: Failure) -> None:
        delay = (outcome.retry_delay if outcome.retry_delay is not None
                 else self.backoff.delay(lease.attempt))
        state = await self.db.write(
            functools.partial(self.store.fail, final=outcome.final, outcome=(
                AttemptOutcome.TIMEOUT if outcome.timed_out else AttemptOutcome.ERROR)),
            lease, outcome.error, outcome.traceback, delay,
        )
        if state is None:
            log.warning("job %s: lease lost before its failure was recorded", lease.job_id)
        elif state is JobState.FAILED:
            log.info("job %s failed for good after %d attempt(s)%s: %s",
                     lease.job_id, lease.attempt,
                     " (its task does not retry this error)" if outcome.final else "",
                     outcome.error)
        else:
            log.info("job %s attempt %d failed, retrying in %.2fs: %s",
                     lease.job_id, lease.attempt, delay, outcome.error)

    async def _write_snooze(self, lease: Lease, outcome: Snoozed) -> None:
        state = await self.db.write(self.store.snooze, lease, outcome.seconds,
                                    outcome.max_snoozes)
        if state is None:
            log.warning("job %s: lease lost before its snooze was recorded", lease.job_id)
        elif state is JobState.FAILED:
            log.info("job %s failed: snoozed %d times in a row (its task's max_snoozes)",
                     lease.job_id, outcome.max_snoozes)
        else:
            log.info("job %s snoozed for %.2fs (attempt %d not charged)",
                     lease.job_id, outcome.seconds, lease.attempt)

    async def _write_cancel(self, lease: Lease, outcome: Cancelled) -> None:
        if await self.db.write(self.store.cancel_running, lease, outcome.reason):
            log.info("job %s cancelled by its handler: %s", lease.job_id, outcome.reason)
        else:
            log.warning("job %s: lease lost before its cancellation was recorded",
                        lease.job_id)

    async def write_out(self, hurry: bool) -> None:
        """At shutdown: give the complete loop a few seconds (one try when hurried) to write
        what is left, then release what it could not write, like an unfinished job: the
        attempt is not charged and the job runs again. The guarded release refuses any that
        were written after all. If even that fails, the leases expire and rescue takes over."""
        deadline = time.monotonic() + (0.5 if hurry else 5.0)
        while len(self.outbox) and time.monotonic() < deadline:
            self.outbox.ready.set()
            await asyncio.sleep(0.02)
        if not len(self.outbox):
            return
        leases = self.outbox.leases()
        try:
            n = await self.db.write(self.store.release, leases)
            log.warning("%d finished job(s) could not be written; %d released to run again",
                        len(leases), n)
        except StoreUnavailable as exc:
            log.warning("%d finished job(s) not written; they will run again after their "
                        "leases expire: %s", len(leases), exc)
