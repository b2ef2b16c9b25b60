"""Rows become domain objects here, at the store's boundary; and page cursors."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, TypeVar

from jobq.errors import InvalidCursor
from jobq.keys import ApiKey
from jobq.store.tables import jobs
from jobq.types import Attempt, AttemptOutcome, Job, JobState, NewJob, WorkerInfo

T = TypeVar("T")


def built(cls: type[T], **fields: Any) -> T:
    """An instance of the frozen dataclass ``cls`` (one without ``__post_init__``) from all
    its fields, set directly: its generated __init__ sets each field through
    ``object.__setattr__``, 13 times as slow, which was a tenth of the time of a claim of
    200 jobs and of enqueue_many's batches of 1,000."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


_JOB_COLUMNS = tuple(jobs.c.keys())
_STATES = {s.value: s for s in JobState}


def job_of(row: Any, attempt_log: Sequence[Attempt] = ()) -> Job:
    """A row of ``select(jobs)`` or ``RETURNING *jobs.c``: its columns are the Job's fields,
    in the table's order, taken in one step (a mapping lookup per field, or ``row._fields``,
    was a tenth of a claim)."""
    fields = dict(zip(_JOB_COLUMNS, row))
    fields["state"] = _STATES[fields["state"]]
    fields["tags"] = tuple(fields["tags"] or ())  # NULL when none were given
    fields["meta"] = fields["meta"] or {}
    fields["attempt_log"] = tuple(attempt_log)
    return built(Job, **fields)


def attempt_of(row: Any) -> Attempt:
    m = row._mapping
    return Attempt(
        id=m["id"],
        job_id=m["job_id"],
        attempt=m["attempt"],
        worker_id=m["worker_id"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        outcome=AttemptOutcome(m["outcome"]),
        error=m["error"],
        traceback=m["traceback"],
    )


def created_job(new: NewJob, row: Any) -> Job:
    """The job that ``new`` became: its fields as given, with what the database chose (the
    id and times) from ``row``, so the payload is not read back. (PostgreSQL's JSONB keeps
    the value, not the text: a stored ``-0.0`` reads back as ``0.0``, ``1e300`` as an
    integer.)"""
    return built(
        Job,
        id=row.id, task_type=new.task_type, payload=new.payload, queue=new.queue,
        priority=new.priority, state=JobState.PENDING, attempts=0,
        max_attempts=new.max_attempts, run_at=row.run_at, idempotency_key=new.idempotency_key,
        worker_id=None, lease_token=None, lease_expires_at=None, result=None, last_error=None,
        created_at=row.created_at, started_at=None, finished_at=None, attempt_log=(),
        unique_key=new.unique_key, unique_for=new.unique_for,
        concurrency_key=new.concurrency_key, concurrency_limit=new.concurrency_limit,
        tags=new.tags, meta=dict(new.meta or {}), progress=None, progress_message=None,
        progress_at=None, timeout_seconds=new.timeout_seconds,
        trace_context=new.trace_context,
    )


def worker_of(row: Any, queues: Sequence[str] | None = None) -> WorkerInfo:
    """A live worker; with ``queues``, listed with those of its queues only."""
    return WorkerInfo(
        id=row.id, host=row.host, pid=row.pid,
        queues=tuple(row.queues) if queues is None else tuple(queues),
        started_at=row.started_at, last_heartbeat_at=row.last_heartbeat_at,
    )


def api_key_of(row: Any) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        prefix=m["prefix"],
        queues=tuple(m["queues"]),
        scopes=tuple(m["scopes"]),
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
        last_used_at=m["last_used_at"],
        secret_hash=m["secret_hash"],
    )


_MAX_ID = 2**63 - 1  # BIGINT, and SQLite's INTEGER


def encode_cursor(job_id: int) -> str:
    return base64.urlsafe_b64encode(f"j{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        digits = raw[1:]
        # Only what encode_cursor writes: int() alone would also take "+5", " 5" and "1_0".
        if not raw.startswith("j") or not (digits.isascii() and digits.isdigit()):
            raise ValueError
        value = int(digits)
        # Beyond BIGINT the drivers fail (OverflowError, DataError) instead of finding nothing.
        if not 1 <= value <= _MAX_ID:
            raise ValueError
        return value
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None
