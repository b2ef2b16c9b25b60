"""What every command shares: the options that fall back to JOBQ_* variables, loading the
settings, and turning a JobqError into `jobq: <error>` and an exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from jobq.errors import ConfigError, JobqError
from jobq.settings import Settings, load_settings

if TYPE_CHECKING:
    from jobq.service import JobService

DbUrl = Annotated[
    Optional[str],
    typer.Option("--database-url", help="sqlite:///path.db or postgresql://user@host:port/db "
                 "(env JOBQ_DATABASE_URL; default sqlite:///jobq.db)"),
]
Tasks = Annotated[
    Optional[str],
    typer.Option("--tasks", help="Comma-separated modules that define task handlers "
                 "(env JOBQ_TASKS)"),
]
_DEFAULT_CONCURRENCY = Settings.model_fields["concurrency"].default
Concurrency = Annotated[
    Optional[int],
    typer.Option("--concurrency", "-c", help="Jobs run at once per worker process "
                 f"(env JOBQ_CONCURRENCY; default {_DEFAULT_CONCURRENCY})"),
]
Queues = Annotated[
    Optional[str],
    typer.Option("--queues", "-q", help="Comma-separated queues to serve "
                 "(env JOBQ_QUEUES; default 'default')"),
]
Host = Annotated[Optional[str], typer.Option("--host", help="API address (env JOBQ_HOST; "
                                             "default 127.0.0.1)")]
Port = Annotated[Optional[int], typer.Option("--port", help="API port (env JOBQ_PORT; "
                                             "default 8000)")]
AutoMigrate = Annotated[
    Optional[bool],
    typer.Option("--auto-migrate/--no-auto-migrate",
                 help="Apply pending migrations at start (env JOBQ_AUTO_MIGRATE; default on)"),
]


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        typer.secho(f"jobq: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def _fail(exc: JobqError) -> typer.Exit:
    typer.secho(f"jobq: {exc}", fg="red", err=True)
    return typer.Exit(1)


@contextmanager
def _reported() -> Iterator[None]:
    """A JobqError raised in the block becomes `jobq: <error>` on stderr and exit code 1."""
    try:
        yield
    except JobqError as exc:
        raise _fail(exc) from None


@contextmanager
def service(settings: Settings) -> Iterator[JobService]:
    """A JobService for one command, closed at the end of the block; a JobqError, in opening
    it or in the block, is reported as `_reported` does (exit code 1)."""
    from jobq.service import JobService

    with _reported():
        svc = JobService.from_settings(settings)
        try:
            yield svc
        finally:
            svc.close()
