"""What `jobq bench` needs of the database besides the product's own calls: a table full of
finished jobs, made fast, and the server settings that bound its figures."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, cast, insert, literal

from jobq.store.base import StoreBase, translate
from jobq.store.exprs import seconds_from_now
from jobq.store.tables import jobs
from jobq.types import JobState

_COLUMNS = ["task_type", "payload", "queue", "priority", "state", "attempts", "max_attempts",
            "run_at", "created_at", "started_at", "finished_at"]


class Tooling(StoreBase):
    @translate
    def backfill_finished(
        self, n: int, *, task_type: str = "noop", queue: str = "default"
    ) -> None:
        """Insert ``n`` jobs that finished in the past (``done`` after one attempt), 1 ms
        apart, with one set-based statement, so a million rows take seconds, not minutes. No
        attempt rows: the attempts table is only ever reached through its indexes (lease
        token, job id), and a row per job there would double the time (PostgreSQL checks the
        foreign key row by row)."""
        if n <= 0:
            return
        seq, i = self.dialect.numbers(n)
        ago = cast(n - i, Float) * -0.001  # the last one finished 1 ms before now
        rows = seq.with_only_columns(
            literal(task_type).label("task_type"),
            literal({"backfill": True}, jobs.c.payload.type).label("payload"),
            literal(queue).label("queue"),
            literal(0).label("priority"),
            literal(JobState.DONE.value).label("state"),
            literal(1).label("attempts"),
            literal(1).label("max_attempts"),
            seconds_from_now(ago - 0.002).label("run_at"),
            seconds_from_now(ago - 0.002).label("created_at"),
            seconds_from_now(ago - 0.001).label("started_at"),
            seconds_from_now(ago).label("finished_at"),
        )
        with self.write() as conn:
            self.dialect.unbounded(conn)  # a million rows may take longer than a statement may
            conn.execute(insert(jobs).from_select(_COLUMNS, rows))
        with self.write() as conn:
            self.dialect.unbounded(conn)
            self.dialect.after_bulk_load(conn)

    @translate
    def server_settings(self) -> dict[str, Any]:
        """The database server's settings that bound a benchmark's figures."""
        with self.read() as conn:
            return self.dialect.server_settings(conn)
