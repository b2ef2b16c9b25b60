"""A periodic job for the process tests (JOBQ_TASKS=ledger_tasks,tick_tasks): the ledger task
every second, as schedule ``every-second``."""

from __future__ import annotations

from datetime import timedelta

import ledger_tasks  # noqa: F401 - the task it schedules
from jobq import schedule

schedule("ledger", timedelta(seconds=1), name="every-second", payload={"tick": True})
