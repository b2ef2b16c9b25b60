"""Commands that run jobq: up (API and workers together), api, worker, migrate."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from jobq.cli.options import (
    AutoMigrate,
    Concurrency,
    DbUrl,
    Host,
    Port,
    Queues,
    Tasks,
    _fail,
    _reported,
    _settings,
)
from jobq.errors import ConfigError, JobqError
from jobq.settings import Settings


def _migrate(settings: Settings) -> None:
    """Bring the schema up to date once, before starting processes that would each check."""
    from jobq.store import open_store

    with _reported():
        open_store(settings, auto_migrate=True).dispose()


def _check_open_api(settings: Settings) -> None:
    from jobq.api.server import check_open_api

    try:
        check_open_api(settings)
    except ConfigError as exc:
        typer.secho(f"jobq: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except JobqError as exc:
        raise _fail(exc) from None


def up(
    workers: Annotated[int, typer.Option("--workers", "-w", min=0, max=64,
                                         help="Worker processes to start")] = 2,
    database_url: DbUrl = None,
    tasks: Tasks = None,
    concurrency: Concurrency = None,
    queues: Queues = None,
    host: Host = None,
    port: Port = None,
) -> None:
    """Migrate, then run the API and N worker processes; Ctrl-C stops them all cleanly."""
    from jobq.api.supervisor import Supervisor
    from jobq.worker import configure_logging

    settings = _settings(database_url=database_url, tasks=tasks, concurrency=concurrency,
                         queues=queues, host=host, port=port)
    configure_logging(settings.log_level)
    _migrate(settings)
    _check_open_api(settings)
    typer.echo(
        f"jobq up: API on http://{settings.host}:{settings.port} (docs at /docs), "
        f"{workers} worker process(es), database {settings.database_url}. Ctrl-C stops."
    )
    raise typer.Exit(Supervisor(settings, workers=workers, api=True).run())


def api(
    database_url: DbUrl = None,
    tasks: Tasks = None,
    host: Host = None,
    port: Port = None,
    auto_migrate: AutoMigrate = None,
    processes: Annotated[Optional[int], typer.Option(
        "--processes", "-p",
        help="API processes sharing the port (env JOBQ_API_PROCESSES; default 1)")
    ] = None,
) -> None:
    """Run the REST API server (uvicorn)."""
    from jobq.api.server import serve_api

    settings = _settings(database_url=database_url, tasks=tasks, host=host, port=port,
                         auto_migrate=auto_migrate, api_processes=processes)
    raise typer.Exit(serve_api(settings))


def worker(
    database_url: DbUrl = None,
    tasks: Tasks = None,
    concurrency: Concurrency = None,
    queues: Queues = None,
    processes: Annotated[Optional[int], typer.Option(
        "--processes", "-p", help="Worker processes to run (env JOBQ_PROCESSES; default 1)")
    ] = None,
    auto_migrate: AutoMigrate = None,
) -> None:
    """Run worker process(es): claim due jobs, run their handlers, record the outcomes."""
    from jobq.api.supervisor import Supervisor
    from jobq.worker import configure_logging, run_worker

    settings = _settings(database_url=database_url, tasks=tasks, concurrency=concurrency,
                         queues=queues, processes=processes, auto_migrate=auto_migrate)
    with _reported():
        if settings.processes == 1:
            raise typer.Exit(run_worker(settings))
        configure_logging(settings.log_level)
        if settings.auto_migrate:
            _migrate(settings)
        raise typer.Exit(Supervisor(settings, workers=settings.processes).run())


def migrate_cmd(database_url: DbUrl = None) -> None:
    """Apply pending database migrations (safe to run from many processes at once)."""
    from jobq.store.migrate import head_revision

    _migrate(_settings(database_url=database_url))
    typer.echo(f"database schema at revision {head_revision()}")
