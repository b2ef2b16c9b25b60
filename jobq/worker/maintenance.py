"""The chores every worker shares with the others: rescuing jobs whose lease expired (their
worker died or froze), and pruning silent workers and old finished jobs.

Every worker does them, so that no single process is needed for recovery; the store makes them
safe to run concurrently (SKIP LOCKED for rescue, one pruner at a time under a lock).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from dataclasses import dataclass

from jobq import metrics
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.types import JobState
from jobq.worker.db import Db

log = logging.getLogger("jobq.worker")


@dataclass
class Maintenance:
    store: SqlStore
    db: Db
    settings: Settings
    wake: asyncio.Event  # the fetcher's

    async def rescue(self) -> float:
        """Expired leases → pending (or failed, attempts spent)."""
        rescued = await self.db.call(self.store.rescue)
        for job in rescued:
            log.warning("rescued job %s (lease expired) -> %s", job.id, job.state)
            metrics.rescued(job)
        if any(job.state is JobState.PENDING for job in rescued):
            self.wake.set()  # claim them now if a slot is free, not at the next poll
        return self.settings.rescue_interval_seconds

    async def prune(self) -> float:
        """Forget workers silent for ten leases; delete finished jobs, and schedules no
        worker declares, past their retention periods (JOBQ_RETENTION_SECONDS for done and
        cancelled jobs, JOBQ_FAILED_RETENTION_SECONDS for failed ones; 0 keeps them)."""
        await self.db.call(self.store.prune_workers, 10 * self.settings.lease_seconds)
        keep = self.settings.retention_seconds or math.inf
        keep_failed = self.settings.failed_retention_seconds or math.inf
        if math.isinf(keep) and math.isinf(keep_failed):
            return self.settings.prune_interval_seconds
        if not math.isinf(keep):
            # Schedules no worker has declared that long were removed from the code.
            await self.db.call(self.store.prune_schedules, keep)
        deleted = await self.db.call(functools.partial(
            self.store.prune_finished, keep, keep_failed_for=keep_failed))
        if deleted:
            log.info("pruned %d finished job(s) (retention %.0fs, failed %.0fs)", deleted,
                     keep, keep_failed)
        # A full batch means more are due: go on soon, but leave the database room to breathe.
        if deleted == self.store.PRUNE_BATCH:
            return 1.0
        return self.settings.prune_interval_seconds
