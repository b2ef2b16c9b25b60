"""jobq: a fault-tolerant, SQL-backed background job system."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobq.chains import chain, group, step
from jobq.errors import Cancel, JobTimeout, Snooze
from jobq.registry import JobContext, task
from jobq.schedules import schedule

if TYPE_CHECKING:
    from jobq.client import AsyncClient, Client
    from jobq.service import JobService

__all__ = ["task", "schedule", "JobContext", "Snooze", "Cancel", "JobTimeout", "connect",
           "Client", "AsyncClient", "chain", "group", "step"]
__version__ = "0.1.0"


def connect(database_url: str | None = None, **settings: Any) -> JobService:
    """The Python client: a JobService on the database of ``database_url``.

    ``database_url`` and ``settings`` (any field of jobq.settings.Settings, such as
    ``tasks=["myapp.tasks"]``) override the ``JOBQ_*`` environment, as CLI options do. Close
    it when done (``with jobq.connect(...) as q:``). Thread-safe: share one per process.
    """
    # Imported here, so that `from jobq import task` in a task module stays light.
    from jobq.service import JobService
    from jobq.settings import load_settings

    return JobService.from_settings(load_settings(database_url=database_url, **settings))


def __getattr__(name: str) -> Any:
    # The HTTP clients, imported on first use: a task module's `from jobq import task` need
    # not load httpx.
    if name in ("Client", "AsyncClient"):
        from jobq import client

        return getattr(client, name)
    raise AttributeError(f"module 'jobq' has no attribute {name!r}")
