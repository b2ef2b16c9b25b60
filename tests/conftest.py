"""Shared fixtures. Every storage-touching test runs on both backends through ``db_url``.

PostgreSQL: JOBQ_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test) is used
as an admin connection to create a throw-away database for the session. When it cannot be
reached, the PostgreSQL half is skipped and the run says so loudly at the end; with
JOBQ_REQUIRE_POSTGRES=1 (as .ci/run sets it) an unreachable PostgreSQL fails the run instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from jobq.harness import PgDatabases
from jobq.registry import load_registry
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore, open_store
from procs import Procs

PG_ADMIN_URL = os.environ.get(
    "JOBQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("JOBQ_REQUIRE_POSTGRES", "") in {"1", "true", "yes"}

_pg_skipped: list[str] = []


def _pg_reason() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {exc}".strip()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database for this test session."""
    reason = _pg_reason()
    if reason is not None:
        if REQUIRE_PG:
            pytest.fail(f"JOBQ_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
        _pg_skipped.append(reason)
        pytest.skip(reason)
    db = PgDatabases(PG_ADMIN_URL, name=f"jobq_test_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    db.create()
    url = db.url()
    store = open_store(load_settings(database_url=url))
    store.dispose()
    try:
        yield url
    finally:
        db.drop()


def _truncate(url: str) -> None:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
        c.execute("TRUNCATE jobq_jobs, jobq_attempts, jobq_workers, jobq_api_keys, jobq_schedules, "
                  "jobq_queues "
                  "RESTART IDENTITY CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A clean database of each backend: a new SQLite file, or the emptied session database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobq.db'}"
    url: str = request.getfixturevalue("pg_url")
    _truncate(url)
    return url


@pytest.fixture
def settings(db_url: str) -> Settings:
    return load_settings(
        database_url=db_url,
        lease_seconds=5,
        rescue_interval_seconds=0.5,
        poll_interval_seconds=0.05,
        backoff_base_seconds=0.05,
        backoff_cap_seconds=0.2,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[SqlStore]:
    s = open_store(settings)
    yield s
    s.dispose()


@pytest.fixture
def service(store: SqlStore, settings: Settings) -> JobService:
    return JobService(store, load_registry(settings.tasks), settings)


@pytest.fixture
def procs(tmp_path) -> Iterator[Procs]:  # type: ignore[no-untyped-def]
    """Real jobq processes of one test, all stopped (by PID) when it ends."""
    p = Procs(tmp_path)
    yield p
    p.stop_all()


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if _pg_skipped:
        bar = "!" * 78
        terminalreporter.write_line(bar, red=True, bold=True)
        terminalreporter.write_line(
            "THE POSTGRESQL HALF OF THE SUITE WAS SKIPPED: only SQLite was tested.",
            red=True, bold=True,
        )
        terminalreporter.write_line(f"  {_pg_skipped[0]}", red=True)
        terminalreporter.write_line(
            "  Start PostgreSQL or set JOBQ_TEST_POSTGRES_URL; JOBQ_REQUIRE_POSTGRES=1 makes "
            "this an error.", red=True,
        )
        terminalreporter.write_line(bar, red=True, bold=True)
