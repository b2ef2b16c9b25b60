"""The scheduler loop: every worker enqueues the periodic jobs its task modules declare.

No leader: every worker runs this loop, and the database makes each tick one job
(``store/schedules.py``). A pass costs one read while nothing is due; the loop sleeps until
the earliest next tick, at most ``MAX_PAUSE`` (so a tick is enqueued within about that of its
time, and a schedule changed by another worker is noticed).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

from jobq.registry import TaskRegistry
from jobq.schedules import Schedule
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.worker.db import Db

log = logging.getLogger("jobq.worker")

#: Longest sleep between two passes.
MAX_PAUSE = 1.0
#: How often a worker says its schedules are still declared (``declared_at``).
TOUCH_SECONDS = 60.0


def declared(registry: TaskRegistry, settings: Settings) -> list[Schedule]:
    """The registry's schedules, with their jobs' attempts settled (the task's, else
    JOBQ_MAX_ATTEMPTS), as this worker declares them."""
    return [
        dataclasses.replace(s, max_attempts=registry.get(s.task_type).max_attempts
                            or settings.max_attempts)
        for s in registry.schedules()
    ]


@dataclass
class Scheduler:
    store: SqlStore
    db: Db
    schedules: list[Schedule]
    _declared: bool = False
    _touched: float = field(default=0.0)

    async def run(self) -> float:
        """One pass: declare (first), enqueue what is due; returns the pause until the next."""
        if not self._declared:
            changes = await self.db.call(self.store.declare_schedules, self.schedules)
            for name, change in changes.items():
                if change != "same":
                    log.info("schedule %s: %s", name, change)
            self._declared, self._touched = True, time.monotonic()
        elif time.monotonic() - self._touched >= TOUCH_SECONDS:
            await self.db.call(self.store.touch_schedules, self.schedules)
            self._touched = time.monotonic()
        done = await self.db.call(self.store.run_schedules, self.schedules)
        for fired in done.fired:
            if fired.created:
                log.info("schedule %s: enqueued job %s for %s", fired.schedule, fired.job_id,
                         fired.tick.isoformat())
        for name, since in done.missed:
            log.warning("schedule %s: skipped the ticks from %s that are older than its "
                        "grace (catch_up=True would enqueue them)", name, since.isoformat())
        if done.more:
            return 0.0
        if done.next_run_at is None:
            return MAX_PAUSE
        wait = (done.next_run_at - done.now).total_seconds()
        # run_loop takes up to a fifth off, so the pass lands at or a little before the
        # tick; one that finds it not yet due sleeps again, for what is left.
        return min(max(wait, 0.01), MAX_PAUSE)
