"""The lone enqueue: one statement, its own transaction (``Dialect.statement_runner``).

On PostgreSQL it runs past SQLAlchemy's execution layer (``jobq.store.direct``); what that
layer did for it must still happen: a connection the server dropped is not lent again, and
its error is the store's own.
"""

from __future__ import annotations

import psycopg
import pytest

from jobq.errors import StoreUnavailable
from jobq.store import SqlStore
from jobq.store.postgres import listen_dsn
from jobq.types import JobState, NewJob


def test_a_lone_enqueue_is_committed_and_reads_back_as_returned(store: SqlStore) -> None:
    made = store.enqueue(NewJob("echo", {"k": [1, "ü"]}, queue="q", priority=3,
                                tags=("a",), meta={"m": 1}, timeout_seconds=2.5)).job
    got = store.get(made.id)
    assert (got.payload, got.queue, got.priority, got.state) == (
        {"k": [1, "ü"]}, "q", 3, JobState.PENDING)
    assert (got.tags, got.meta, got.timeout_seconds) == (("a",), {"m": 1}, 2.5)
    assert (got.run_at, got.created_at) == (made.run_at, made.created_at)
    assert made.run_at.tzinfo is not None


def test_a_connection_the_server_dropped_fails_one_enqueue_and_is_not_lent_again(
        store: SqlStore) -> None:
    dsn = listen_dsn(store.engine)
    if dsn is None:
        pytest.skip("a server that drops connections is PostgreSQL's")
    first = store.enqueue(NewJob("echo", 1)).job  # the pool now holds a connection
    with psycopg.connect(dsn, autocommit=True) as admin:
        dropped = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'jobq' AND datname = current_database() "
            "AND pid <> pg_backend_pid()").fetchone()[0]
    assert dropped >= 1
    with pytest.raises(StoreUnavailable, match="lost"):
        store.enqueue(NewJob("echo", 2))
    # The next ones get a live connection: the dropped one was thrown away, not lent again.
    after = [store.enqueue(NewJob("echo", k)).job for k in (3, 4)]
    assert [store.get(j.id).payload for j in after] == [3, 4] and after[0].id > first.id
    assert store.engine.pool.checkedout() == 0
