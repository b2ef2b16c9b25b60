"""Factories for the storage tests: build jobs through the store's own API, never raw rows."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from jobq.store import SqlStore
from jobq.types import ClaimedJob, Job, NewJob

_seq = itertools.count(1)


def new_job(**overrides: Any) -> NewJob:
    """A NewJob with sensible defaults; every field can be overridden."""
    fields: dict[str, Any] = {"task_type": "echo", "payload": {"n": next(_seq)}}
    fields.update(overrides)
    return NewJob(**fields)


def enqueue(store: SqlStore, **overrides: Any) -> Job:
    result = store.enqueue(new_job(**overrides))
    assert result.created
    return result.job


def enqueue_many(store: SqlStore, n: int, **overrides: Any) -> list[Job]:
    return [enqueue(store, **overrides) for _ in range(n)]


def claim_one(
    store: SqlStore,
    worker_id: str = "w1",
    queues: tuple[str, ...] = ("default",),
    lease_seconds: float = 30.0,
) -> ClaimedJob:
    """Claim exactly one job, failing the test when none is claimable."""
    claimed = store.claim(worker_id, list(queues), 1, lease_seconds)
    assert len(claimed) == 1, f"expected one claimable job, got {claimed!r}"
    return claimed[0]


def claim_expired(store: SqlStore, worker_id: str = "w1", **kw: Any) -> ClaimedJob:
    """Claim one job with a lease that expired a second ago, as a dead worker leaves it.

    The expiry is computed by the database (now - 1 s), so no sleeping and no local clock.
    """
    return claim_one(store, worker_id, lease_seconds=-1.0, **kw)


def past(store: SqlStore, seconds: float) -> datetime:
    """The database's now minus ``seconds``."""
    return store.ping() - timedelta(seconds=seconds)


def future(store: SqlStore, seconds: float) -> datetime:
    """The database's now plus ``seconds``."""
    return store.ping() + timedelta(seconds=seconds)
