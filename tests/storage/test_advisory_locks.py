"""PostgreSQL's advisory locks: each kind of one-at-a-time work has its own key, so pruning
waits only for another pruner and a migration only for another migration."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import update

from jobq.store import SqlStore
from jobq.store.exprs import MAINTENANCE_LOCK, MIGRATION_LOCK, seconds_from_now
from jobq.store.postgres import listen_dsn
from jobq.store.tables import jobs

from factories import claim_one, enqueue


@pytest.fixture
def other_session(store: SqlStore) -> Iterator[psycopg.Connection]:
    dsn = listen_dsn(store.engine)
    if dsn is None:
        pytest.skip("advisory locks are PostgreSQL's; SQLite has one writer at a time")
    with psycopg.connect(dsn) as conn:
        yield conn


def _finished_long_ago(store: SqlStore) -> None:
    enqueue(store)
    claimed = claim_one(store)
    assert store.complete(claimed.lease, None)
    with store.engine.begin() as conn:
        conn.execute(update(jobs).values(finished_at=seconds_from_now(-3600)))


def test_the_keys_differ() -> None:
    assert MIGRATION_LOCK != MAINTENANCE_LOCK


def test_a_migration_in_progress_does_not_stop_pruning(
    store: SqlStore, other_session: psycopg.Connection
) -> None:
    _finished_long_ago(store)
    other_session.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    assert store.prune_finished(60) == 1


def test_another_pruner_makes_pruning_step_aside(
    store: SqlStore, other_session: psycopg.Connection
) -> None:
    _finished_long_ago(store)
    other_session.execute("SELECT pg_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,))
    assert store.prune_finished(60) is None
    other_session.rollback()
    assert store.prune_finished(60) == 1
