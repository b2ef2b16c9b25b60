"""When to claim jobs and how many, and how a claimed job runs in its slot.

A claim takes at most as many jobs as there are free slots (invariant 6): a job claimed but
not started would hold a lease nobody works on. Between claims the fetcher sleeps until a slot
frees, jobs are rescued, a notification arrives (PostgreSQL LISTEN, which sets the same wake-up)
or, when the queue looked empty, a poll interval passes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from jobq import metrics, tracing
from jobq.errors import StoreUnavailable
from jobq.registry import TaskRegistry
from jobq.retry import Backoff
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.types import ClaimedJob, Failure
from jobq.worker.db import Db
from jobq.worker.executor import run_claimed, timed_out, timeout_of
from jobq.worker.loop import jittered, sleep
from jobq.worker.progress import ProgressReports
from jobq.worker.slots import Running, Slots, fence_at

log = logging.getLogger("jobq.worker")


@dataclass
class Fetcher:
    store: SqlStore
    db: Db
    slots: Slots  # and, through it, the outbox
    registry: TaskRegistry
    settings: Settings
    worker_id: str
    queues: Sequence[str]

    async def fetch(self) -> float:
        """Claim up to the free slots, start them, then wait for a reason to look again.
        Returns 0: it sleeps itself, on the wake-up rather than a fixed interval."""
        wake = self.slots.wake
        wake.clear()  # before counting, so a slot freed from now on wakes us
        free = self.slots.free()
        if free <= 0:
            # Full: wait for a slot rather than poll.
            await sleep(self.settings.poll_interval_seconds, wake)
            return 0.0
        if self._beats_overdue():
            # Claims get through while heartbeats do not (a lock on our worker row, a
            # struggling server): new jobs would only be fenced and charged an attempt. Only
            # once no beat got through for as long as a fence allows: a merely slow beat (a
            # busy machine) must not hold claims back.
            await sleep(self.settings.poll_interval_seconds, wake)
            return 0.0
        sent = time.monotonic()
        claimed = await self.db.call(
            self.store.claim, self.worker_id, self.queues, free, self.settings.lease_seconds
        )
        if claimed and time.monotonic() >= fence_at(sent, self.settings.lease_seconds):
            # The answer came so late that these leases may have lapsed already (a stalled
            # commit, a frozen process): starting them could overlap a rescued copy.
            await self._give_back(claimed)
            return 0.0
        for c in claimed:
            self.start(c, sent)
        if len(claimed) < free:
            # The queue is (for now) empty: poll again later, sooner when woken.
            await sleep(jittered(self.settings.poll_interval_seconds), wake)
        return 0.0

    def _beats_overdue(self) -> bool:
        if not self.settings.heartbeat_enabled:
            return False
        lease = self.settings.lease_seconds
        return time.monotonic() > fence_at(self.slots.beat_confirmed, lease)

    async def _give_back(self, claimed: Sequence[ClaimedJob]) -> None:
        log.warning("a claim of %d job(s) answered too late to be safe; giving them back",
                    len(claimed))
        try:
            await self.db.write(self.store.release, [c.lease for c in claimed])
        except StoreUnavailable:
            pass  # their leases lapse and rescue takes them

    @functools.cached_property
    def backoff(self) -> Backoff:
        """The worker's backoff, for what a task's own policy leaves out."""
        return Backoff(self.settings.backoff_base_seconds, self.settings.backoff_cap_seconds)

    def start(self, claimed: ClaimedJob, sent: float) -> Running:
        metrics.started(claimed.job)
        running = self.slots.add(claimed, sent)
        running.timeout = timeout_of(claimed.job, self.registry, self.settings.timeout_seconds)
        if running.timeout is not None:
            running.deadline = time.monotonic() + running.timeout  # Slots.expire watches it
        running.task = asyncio.create_task(self._work(running), name=f"job-{claimed.job.id}")
        return running

    async def _work(self, running: Running) -> None:
        """Run the job; hand its outcome to the outbox unless the job was taken away; free the
        slot. A cancellation the worker did not ask for propagates (and frees nothing)."""
        lease = running.claimed.lease
        began = time.monotonic()
        reports = ProgressReports(self.store, self.db, lease)
        try:
            parents = (() if running.claimed.job.parents_left is None  # no workflow
                       else tuple(await self.db.call(self.store.parents, lease.job_id)))
            outcome = await tracing.traced(running.claimed, run_claimed(  # in its span
                running.claimed, self.registry, self.worker_id, running.stopped, self.backoff,
                reports.report, parents))
        except StoreUnavailable as exc:  # its parents could not be read: a failed attempt
            outcome = Failure(f"StoreUnavailable: its parents could not be read: {exc}", "")
        except asyncio.CancelledError:
            reports.drop()
            if running.taken_away:
                outcome = None
            elif running.timed_out:  # stopped by Slots.expire: this cancel is handled here
                uncancel = getattr(asyncio.current_task(), "uncancel", None)  # 3.11+
                if uncancel is not None:
                    uncancel()
                outcome = timed_out(running.claimed, self.registry, self.backoff,
                                    running.timeout or 0.0)
            else:
                raise
        metrics.ended(running.claimed, outcome, time.monotonic() - began)
        if outcome is not None and not running.taken_away:
            await reports.flush()  # the last report is written before the outcome
            self.slots.outbox.put(lease, outcome)
        reports.drop()
        self.slots.finish(lease.token)
