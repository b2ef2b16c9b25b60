"""The databases and processes of one chaos campaign: the harness's, with the campaigns'
settings (short leases, the chaos tasks, a ledger database of their own)."""

from __future__ import annotations

import uuid
from pathlib import Path

from jobq.harness import Cluster, PgDatabases, child_env


class Databases(PgDatabases):
    """A fresh PostgreSQL database for jobq and another for the ledger, dropped at the end."""

    def __init__(self, admin_url: str) -> None:
        super().__init__(admin_url, name=f"jobq_chaos_{uuid.uuid4().hex[:10]}",
                         extra=("_ledger",))

    @property
    def jobq_url(self) -> str:
        return self.url()

    @property
    def ledger_url(self) -> str:
        return self.url("_ledger")

    def create(self) -> None:
        from jobq.chaos.ledger import create_schema

        super().create()
        create_schema(self.ledger_url)


def chaos_cluster(run_dir: Path, db_url: str, ledger_url: str) -> Cluster:
    """The API and the workers of one campaign, as real processes."""
    return Cluster(run_dir, child_env({
        "JOBQ_DATABASE_URL": db_url,
        "JOBQ_TASKS": "jobq.chaos.tasks",
        "JOBQ_CHAOS_LEDGER_URL": ledger_url,
        "JOBQ_LEASE_SECONDS": "3",
        "JOBQ_RESCUE_INTERVAL_SECONDS": "1",
        "JOBQ_POLL_INTERVAL_SECONDS": "0.2",
        "JOBQ_BACKOFF_BASE_SECONDS": "0.2",
        "JOBQ_BACKOFF_CAP_SECONDS": "2",
        "JOBQ_SHUTDOWN_GRACE_SECONDS": "2",
        "JOBQ_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }))
