"""Progress reports: a running job's last ``ctx.progress(fraction, message)``, written by its
lease holder only (fenced like a heartbeat: ``exprs.held``)."""

from __future__ import annotations

from sqlalchemy import update

from jobq.store.base import StoreBase, translate
from jobq.store.exprs import db_now, held
from jobq.store.tables import jobs
from jobq.types import PROGRESS_MESSAGE_CHARS, Lease


class Progress(StoreBase):
    @translate
    def set_progress(self, lease: Lease, fraction: float, message: str | None) -> bool:
        """Store the job's progress; False when the lease was lost (nothing is written: a
        late report of a job that finished, was rescued or cancelled changes nothing)."""
        if message is not None:
            message = message[:PROGRESS_MESSAGE_CHARS]
        with self.dialect.one_statement(self) as conn:
            return conn.execute(
                update(jobs).where(held(lease.token, lease.job_id))
                .values(progress=float(fraction), progress_message=message,
                        progress_at=db_now())
            ).rowcount == 1
