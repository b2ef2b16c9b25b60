"""The attempt log: one row per attempt that did not succeed, written when the attempt ends.

Two attempts are not in the table, because the job's row already holds them (``worker_id``,
``attempts``, ``started_at``, and ``finished_at`` once done): the one running now, which is
the job's lease, and the one that succeeded, after which the job never runs again.
``row_attempt`` shows either. So a job that succeeds at once, most of them, costs one UPDATE
at its claim and one at its completion, and no insert into a second table with three indexes:
that insert was a third of PostgreSQL's work per job. Writing rows at the end rather than at
the claim also saves a lookup: the claim no longer inserts a row that the completion must find
again (through whatever plan PostgreSQL had cached while the table was small: a scan of the
whole table, 2.6 ms of a 3 ms completion after 10,000 jobs on a fresh database).

Each row is keyed by the claim's token (unique): a row written for the same claim again (by
an older jobq that still wrote open rows at the claim) is updated instead, so a rolling
upgrade cannot fail on it. Such an older jobq also recorded successful attempts; a done job
with its successful attempt in the table is shown with that row alone. The other way round,
an older jobq reading jobs that this one completed shows them without their successful
attempt (and with ``worker_id`` set): nothing is lost, the row holds it, but during a rolling
upgrade or after a downgrade those older readers show less.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, func, select

from jobq.store.dialect import Dialect
from jobq.store.exprs import db_now
from jobq.store.tables import attempts
from jobq.types import Attempt, AttemptOutcome, JobState

#: How a snoozed attempt is told apart in the log: it is ``released`` (given back, not
#: charged, as at a graceful stop; the outcome's CHECK constraint has no other value for it)
#: and its error begins with this. A graceful stop's release has no error.
SNOOZED = "snoozed"


def snooze_note(seconds: float) -> str:
    return f"{SNOOZED}: runs again in {seconds:g}s, not charged"


def is_snooze(outcome: str, error: str | None) -> bool:
    return outcome == AttemptOutcome.RELEASED.value and (error or "").startswith(SNOOZED)


def snoozes_in_a_row(conn: Connection, job_id: int, limit: int) -> int:
    """How many of the job's latest ended attempts were snoozes, counted back from the
    latest until another outcome (or ``limit``, beyond which nobody asks)."""
    if limit <= 0:
        return 0
    rows = conn.execute(
        select(attempts.c.outcome,
               func.substr(attempts.c.error, 1, len(SNOOZED)).label("head"))
        .where(attempts.c.job_id == job_id)
        .order_by(attempts.c.id.desc())
        .limit(limit)
    ).all()
    streak = 0
    for r in rows:
        if not is_snooze(r.outcome, r.head):
            break
        streak += 1
    return streak


def upsert(dialect: Dialect) -> Any:
    """INSERT of ended attempts, one parameter set each; an existing row of the same claim
    takes the outcome (see the module's docstring)."""
    ins = dialect.insert(attempts)
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


def row_attempt(row: Any) -> Attempt | None:
    """The attempt a job's row holds: running now, or the one that succeeded (None for a job
    in any other state)."""
    m = row._mapping
    if m["state"] == JobState.RUNNING.value and m["lease_token"] is not None:
        outcome = AttemptOutcome.RUNNING
    elif m["state"] == JobState.DONE.value and m["worker_id"] is not None:
        outcome = AttemptOutcome.DONE
    else:
        return None
    return Attempt(id=None, job_id=m["id"], attempt=m["attempts"], worker_id=m["worker_id"],
                   started_at=m["started_at"], finished_at=m["finished_at"],
                   outcome=outcome, error=None, traceback=None)


def with_row_attempt(row: Any, log: list[Attempt]) -> list[Attempt]:
    """The whole attempt log of a job: what the table holds, then what its row holds."""
    last = row_attempt(row)
    # (Numbers do not tell attempts apart: a retried job counts from 1 again. Outcomes do: a
    # job succeeds once, and an older jobq's row of that success is the same attempt.)
    if last is None or any(a.outcome is last.outcome for a in log):
        return log
    return [*log, last]
