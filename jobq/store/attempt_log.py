"""The attempt log: one row per attempt, written when the attempt ends.

A running attempt is not in the table: it is the job's lease (``worker_id``, ``lease_token``,
``attempts``, ``started_at`` on the job row), and ``running_attempt`` shows it. Writing the
row at the end rather than at the claim saves a write per job and, above all, a lookup: the
claim no longer inserts a row that the completion must find again. That lookup went through
whatever plan PostgreSQL had cached while the table was small (a scan of the whole table,
2.6 ms of a 3 ms completion after 10,000 jobs on a fresh database).

Each row is keyed by the claim's token (unique): a row written for the same claim again (by
an older jobq that still wrote open rows at the claim) is updated instead, so a rolling
upgrade cannot fail on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection

from jobq.store.dialect import Dialect
from jobq.store.exprs import db_now
from jobq.store.tables import attempts
from jobq.types import Attempt, AttemptOutcome, JobState

#: The columns of an ended attempt, in this order, as ``record``'s rows and ``recorded``'s
#: source give them; ``finished_at`` is the database's now.
ENDED = ("job_id", "attempt", "worker_id", "lease_token", "started_at", "outcome", "error",
         "traceback")


def upsert(dialect: Dialect) -> Any:
    """INSERT of ended attempts, one parameter set each."""
    return _one_per_claim(dialect.insert(attempts))


def recorded(dialect: Dialect, source: Any) -> Any:
    """The INSERT … SELECT of the ended attempts that ``source`` (a SELECT of the ``ENDED``
    columns in order, then ``finished_at``) yields."""
    return _one_per_claim(dialect.insert(attempts).from_select([*ENDED, "finished_at"], source))


def _one_per_claim(ins: Any) -> Any:
    # An existing row of the same claim takes the outcome (see the module's docstring).
    return ins.on_conflict_do_update(
        index_elements=[attempts.c.lease_token],
        set_={"outcome": ins.excluded.outcome, "finished_at": ins.excluded.finished_at,
              "error": ins.excluded.error, "traceback": ins.excluded.traceback},
    )


def of_row(row: Any) -> dict[str, Any]:
    """The attempt a job row holds while running (id, attempts, worker_id, lease_token,
    started_at: read before the row leaves running, which clears its lease)."""
    return {"job_id": row.id, "attempt": row.attempts, "worker_id": row.worker_id,
            "lease_token": row.lease_token, "started_at": row.started_at}


def record(
    conn: Connection, dialect: Dialect, ended: Iterable[dict[str, Any]],
    outcome: AttemptOutcome, error: str | None = None, tb: str | None = None,
) -> None:
    """Write ended attempts (each as ``of_row`` gives it) in ``conn``'s transaction."""
    params = [{**e, "outcome": outcome.value, "error": error, "traceback": tb} for e in ended]
    if params:
        conn.execute(upsert(dialect).values(finished_at=db_now()), params)


def running_attempt(row: Any) -> Attempt | None:
    """The attempt a running job's row holds (None for a job that is not running)."""
    m = row._mapping
    if m["state"] != JobState.RUNNING.value or m["lease_token"] is None:
        return None
    return Attempt(id=None, job_id=m["id"], attempt=m["attempts"], worker_id=m["worker_id"],
                   started_at=m["started_at"], finished_at=None,
                   outcome=AttemptOutcome.RUNNING, error=None, traceback=None)
