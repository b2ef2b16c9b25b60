"""SqlStore: the store's concerns composed into the one object the service and the worker
use. Each concern is a file of its own; this one only puts them together."""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine
from typing import Any

from jobq.settings import Settings

from jobq.store.api_keys import ApiKeys
from jobq.store.dashboard import DashboardReads
from jobq.store.enqueue import Enqueue
from jobq.store.leases import Leases
from jobq.store.maintenance import Maintenance
from jobq.store.operator import BulkOperator
from jobq.store.progress import Progress
from jobq.store.queries import Queries
from jobq.store.queues import Queues
from jobq.store.schedules import Schedules
from jobq.store.tooling import Tooling
from jobq.store.workflows import WorkflowReads


class SqlStore(Enqueue, Queries, Leases, BulkOperator, Queues, Maintenance, Schedules, ApiKeys,
               Tooling, Progress, DashboardReads, WorkflowReads):
    """Jobs, attempts, workers, queues, schedules and API keys in a SQL database. Thread-safe; one per
    process. Made by ``open_store``."""

    def dispose(self) -> None:
        self.engine.dispose()

    def listen(
        self, queues: Collection[str], wake: Callable[[], None], settings: Settings
    ) -> Coroutine[Any, Any, None] | None:
        """A coroutine that calls ``wake`` whenever jobs of ``queues`` may have become due
        (PostgreSQL LISTEN on its own connection, to JOBQ_LISTEN_URL if set; SQLite: a watch
        of the file's commit counter; it runs until cancelled), or None where there is
        nothing to watch (an in-memory SQLite database, a pooler in transaction mode without
        a listen URL)."""
        return self.dialect.listen(self.engine, queues, wake, settings)

    def listen_final(
        self, heard: Callable[[list[int] | None], None], settings: Settings
    ) -> Coroutine[Any, Any, None] | None:
        """A coroutine that calls ``heard(ids)`` when jobs ``ids`` may have become final and
        ``heard(None)`` when any may have (PostgreSQL: LISTEN on the finished jobs' channel;
        SQLite: the file's commits), until cancelled; or None where nothing can be watched."""
        return self.dialect.listen_final(self.engine, heard, settings)
