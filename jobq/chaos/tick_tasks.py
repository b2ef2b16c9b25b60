"""The periodic job of campaign 16 (JOBQ_TASKS=jobq.chaos.tasks,jobq.chaos.tick_tasks): a
short ledger task every second. A module of its own, so that no other campaign's workers run
the schedule."""

from __future__ import annotations

from datetime import timedelta

from jobq import schedule
from jobq.chaos import tasks  # noqa: F401 - registers chaos.work, the task scheduled here

NAME = "chaos-every-second"

schedule("chaos.work", timedelta(seconds=1), name=NAME, payload={"ms": 50})
