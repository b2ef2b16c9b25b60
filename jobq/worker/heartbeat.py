"""How the worker keeps its leases, and what it does when it cannot.

Each beat extends the leases of the running jobs and of the finished ones whose outcomes are
not written yet (the store re-registers the worker if its row was pruned while it was frozen).
A token the store does not renew was rescued or cancelled: its handler is stopped, and its late
writes would be refused by the store anyway (fencing). When no beat got through for a whole
lease, others may already have rescued our jobs, so the worker fences itself: it stops their
handlers rather than let two copies run on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from jobq.errors import StoreUnavailable
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.types import WorkerRegistration
from jobq.worker.db import Db
from jobq.worker.slots import Slots

log = logging.getLogger("jobq.worker")


@dataclass
class Heartbeat:
    store: SqlStore
    db: Db
    slots: Slots  # and, through it, the outbox
    settings: Settings
    registration: WorkerRegistration
    last_ok: float = field(default_factory=time.monotonic)

    async def beat(self) -> float:
        try:
            # Waits for an outcome write in flight, but at most one heartbeat interval.
            async with self.db.turn(self.settings.heartbeat_seconds):
                tokens = [*self.slots.tokens(), *self.slots.outbox.tokens()]  # after that write
                valid = await self.db.call(
                    self.store.heartbeat, self.registration.id, tokens,
                    self.settings.lease_seconds, registration=self.registration,
                )
        except StoreUnavailable:
            if time.monotonic() - self.last_ok > self.settings.lease_seconds:
                self.slots.lose(self.slots.tokens(), "no heartbeat got through for a whole lease")
            raise
        self.last_ok = time.monotonic()
        gone = [t for t in tokens if t not in valid]
        self.slots.lose(gone, "lease lost (rescued or cancelled)")
        for lease in self.slots.outbox.drop_lost(gone):
            log.warning("job %s: lease lost before its outcome was written; discarded",
                        lease.job_id)
        return self.settings.heartbeat_seconds
