"""The chaos ledger: every execution of a chaos task, recorded outside jobq's control.

It lives in its own PostgreSQL database and is written over the task's own connection, never
the worker's. While a task runs it holds a PostgreSQL advisory lock keyed by the job id, so a
second execution of the same job that overlaps the first is caught in the act (``overlapped``).
A killed worker's connection dies with it, which releases its lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ENV = "JOBQ_CHAOS_LEDGER_URL"

SCHEMA = """
CREATE TABLE IF NOT EXISTS chaos_ledger (
    id          bigserial PRIMARY KEY,
    job_id      bigint NOT NULL,
    attempt     int NOT NULL,
    pid         int NOT NULL,
    task        text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at    timestamptz,
    outcome     text,
    overlapped  boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS chaos_ledger_job ON chaos_ledger (job_id);
CREATE TABLE IF NOT EXISTS chaos_switches (
    name   text PRIMARY KEY,
    until  timestamptz NOT NULL
);
"""

_pool: list[psycopg.Connection] = []
_lock = threading.Lock()


def create_schema(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)


@contextmanager
def connection() -> Iterator[psycopg.Connection]:
    """A ledger connection of this process (a tiny pool: connecting per job is slow)."""
    with _lock:
        conn = _pool.pop() if _pool else None
    if conn is not None and not conn.closed:
        try:  # a server restarted since (campaign 3) left it dead: not the handler's failure
            conn.execute("SELECT 1")
        except psycopg.Error:
            conn.close()
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ[ENV], autocommit=True, connect_timeout=10)
    try:
        yield conn
    except BaseException:
        conn.close()
        with _lock:  # the others were likely lost with it
            stale, _pool[:] = list(_pool), []
        for other in stale:
            other.close()
        raise
    with _lock:
        _pool.append(conn)


@contextmanager
def execution(job_id: int, attempt: int, task: str) -> Iterator[None]:
    """Record one execution of ``job_id`` from start to end, holding its advisory lock."""
    with connection() as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (job_id,)).fetchone()[0]
        row = conn.execute(
            "INSERT INTO chaos_ledger (job_id, attempt, pid, task, overlapped) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (job_id, attempt, os.getpid(), task, not got),
        ).fetchone()[0]
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            conn.execute(
                "UPDATE chaos_ledger SET ended_at = clock_timestamp(), outcome = %s "
                "WHERE id = %s", (outcome, row),
            )
            if got:
                conn.execute("SELECT pg_advisory_unlock(%s)", (job_id,))


def switch_on(url: str, name: str, seconds: float) -> None:
    """Make ``switched(name)`` true for the next ``seconds`` (database clock)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chaos_switches (name, until) VALUES "
            "(%s, clock_timestamp() + make_interval(secs => %s)) "
            "ON CONFLICT (name) DO UPDATE SET until = EXCLUDED.until",
            (name, seconds),
        )


def switched(name: str) -> bool:
    with connection() as conn:
        row = conn.execute(
            "SELECT until > clock_timestamp() FROM chaos_switches WHERE name = %s", (name,)
        ).fetchone()
    return bool(row and row[0])
