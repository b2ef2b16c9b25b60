"""How the worker keeps its leases, and what it does when it cannot.

Each beat extends the leases of the running jobs and of the finished ones whose outcomes are
not written yet (the store re-registers the worker if its row was pruned while it was frozen).
A token the store does not renew was rescued or cancelled: its handler is stopped, and its late
writes would be refused by the store anyway (fencing).

When beats do not get through, others may rescue our jobs once their leases expire; the
worker then fences itself, by its own monotonic clock: each job's handler is stopped just
before its lease can have expired, whether the beats failed or hang (a partition leaves a call
waiting with no answer). Stopping one copy before the rescued one can start is what keeps two
copies from running at once; the store's fencing keeps the late one's writes out either way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.types import WorkerRegistration
from jobq.worker.db import Db
from jobq.worker.slots import Running, Slots, fence_at

log = logging.getLogger("jobq.worker")

#: How often the self-fencing check looks at the clock, at the longest.
FENCE_CHECK_SECONDS = 1.0


@dataclass
class Heartbeat:
    store: SqlStore
    db: Db
    slots: Slots  # and, through it, the outbox
    settings: Settings
    registration: WorkerRegistration

    async def beat(self) -> float:
        # Waits for an outcome write in flight, but at most one heartbeat interval.
        async with self.db.turn(self.settings.heartbeat_seconds):
            tokens = [*self.slots.live_tokens(), *self.slots.outbox.tokens()]  # after that write
            sent = time.monotonic()
            valid = await self.db.call(
                self.store.heartbeat, self.registration.id, tokens,
                self.settings.lease_seconds, registration=self.registration,
            )
        self.slots.renewed(valid, sent)
        self.slots.beat_confirmed = max(self.slots.beat_confirmed, sent)
        gone = [t for t in tokens if t not in valid]
        self.slots.lose(gone, "lease lost (rescued or cancelled)")
        for lease in self.slots.outbox.drop_lost(gone):
            log.warning("job %s: lease lost before its outcome was written; discarded",
                        lease.job_id)
        return self.settings.heartbeat_seconds

    def fence_at(self, running: Running) -> float:
        return fence_at(running.renewed_from, self.settings.lease_seconds)

    async def fence(self) -> float:
        """Stop the handlers whose leases could not be confirmed in time; return how long
        until the next one is due."""
        now = time.monotonic()
        live = [r for r in self.slots.running() if not r.taken_away]
        late = [r.claimed.lease.token for r in live if self.fence_at(r) <= now]
        if late:
            self.slots.lose(late, "no heartbeat renewed its lease in time (self-fenced)")
        upcoming = [self.fence_at(r) - now for r in live if self.fence_at(r) > now]
        return max(0.01, min([FENCE_CHECK_SECONDS, *upcoming]))
