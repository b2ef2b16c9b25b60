"""The `jobq` command: up, api, worker, migrate, enqueue, stats.

Every option falls back to its JOBQ_* environment variable, then to the default.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Any, Optional

import typer

from jobq.errors import ConfigError, JobqError
from jobq.settings import Settings, load_settings

app = typer.Typer(
    help="jobq: a fault-tolerant, SQL-backed background job system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DbUrl = Annotated[
    Optional[str],
    typer.Option("--database-url", help="sqlite:///path.db or postgresql://user@host:port/db "
                 "[env JOBQ_DATABASE_URL; default sqlite:///jobq.db]"),
]
Tasks = Annotated[
    Optional[str],
    typer.Option("--tasks", help="Comma-separated modules that define task handlers "
                 "[env JOBQ_TASKS]"),
]
Concurrency = Annotated[
    Optional[int],
    typer.Option("--concurrency", "-c", help="Jobs run at once per worker process "
                 "[env JOBQ_CONCURRENCY; default 10]"),
]
Queues = Annotated[
    Optional[str],
    typer.Option("--queues", "-q", help="Comma-separated queues to serve "
                 "[env JOBQ_QUEUES; default 'default']"),
]
Host = Annotated[Optional[str], typer.Option("--host", help="API address [env JOBQ_HOST; "
                                             "default 127.0.0.1]")]
Port = Annotated[Optional[int], typer.Option("--port", help="API port [env JOBQ_PORT; "
                                             "default 8000]")]
AutoMigrate = Annotated[
    Optional[bool],
    typer.Option("--auto-migrate/--no-auto-migrate",
                 help="Apply pending migrations at start [env JOBQ_AUTO_MIGRATE; default on]"),
]


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        typer.secho(f"jobq: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def _migrate(settings: Settings) -> None:
    """Bring the schema up to date once, before starting processes that would each check."""
    from jobq.store import open_store

    try:
        open_store(settings, auto_migrate=True).dispose()
    except JobqError as exc:
        raise _fail(exc) from None


def _fail(exc: JobqError) -> typer.Exit:
    typer.secho(f"jobq: {exc}", fg="red", err=True)
    return typer.Exit(1)


@app.command()
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
    from jobq.supervisor import Supervisor
    from jobq.worker.runner import configure_logging

    settings = _settings(database_url=database_url, tasks=tasks, concurrency=concurrency,
                         queues=queues, host=host, port=port)
    configure_logging(settings.log_level)
    _migrate(settings)
    typer.echo(
        f"jobq up: API on http://{settings.host}:{settings.port} (docs at /docs), "
        f"{workers} worker process(es), database {settings.database_url}. Ctrl-C stops."
    )
    raise typer.Exit(Supervisor(settings, workers=workers, api=True).run())


@app.command()
def api(
    database_url: DbUrl = None,
    tasks: Tasks = None,
    host: Host = None,
    port: Port = None,
    auto_migrate: AutoMigrate = None,
) -> None:
    """Run the REST API server (uvicorn)."""
    from jobq.api_server import serve_api

    settings = _settings(database_url=database_url, tasks=tasks, host=host, port=port,
                         auto_migrate=auto_migrate)
    raise typer.Exit(serve_api(settings))


@app.command()
def worker(
    database_url: DbUrl = None,
    tasks: Tasks = None,
    concurrency: Concurrency = None,
    queues: Queues = None,
    processes: Annotated[Optional[int], typer.Option(
        "--processes", "-p", help="Worker processes to run [env JOBQ_PROCESSES; default 1]")
    ] = None,
    auto_migrate: AutoMigrate = None,
) -> None:
    """Run worker process(es): claim due jobs, run their handlers, record the outcomes."""
    from jobq.supervisor import Supervisor
    from jobq.worker.runner import configure_logging, run_worker

    settings = _settings(database_url=database_url, tasks=tasks, concurrency=concurrency,
                         queues=queues, processes=processes, auto_migrate=auto_migrate)
    try:
        if settings.processes == 1:
            raise typer.Exit(run_worker(settings))
        configure_logging(settings.log_level)
        if settings.auto_migrate:
            _migrate(settings)
        raise typer.Exit(Supervisor(settings, workers=settings.processes).run())
    except JobqError as exc:
        raise _fail(exc) from None


@app.command("migrate")
def migrate_cmd(database_url: DbUrl = None) -> None:
    """Apply pending database migrations (safe to run from many processes at once)."""
    from jobq.store.migrate import head_revision

    _migrate(_settings(database_url=database_url))
    typer.echo(f"database schema at revision {head_revision()}")


@app.command()
def enqueue(
    task_type: Annotated[str, typer.Argument(help="Registered task name, e.g. echo")],
    payload: Annotated[str, typer.Option("--payload", help="JSON payload")] = "null",
    queue: Annotated[str, typer.Option("--queue", help="Queue name")] = "default",
    priority: Annotated[int, typer.Option("--priority", min=-1000, max=1000,
                                          help="Higher runs first")] = 0,
    delay: Annotated[Optional[float], typer.Option("--delay", min=0,
                                                   help="Seconds before it may run")] = None,
    max_attempts: Annotated[Optional[int], typer.Option("--max-attempts", min=1,
                                                        max=1000)] = None,
    idempotency_key: Annotated[Optional[str], typer.Option("--idempotency-key")] = None,
    database_url: DbUrl = None,
    tasks: Tasks = None,
) -> None:
    """Submit one job and print it as JSON."""
    from jobq.service import JobService

    try:
        value = json.loads(payload)
    except ValueError as exc:
        typer.secho(f"jobq: --payload is not valid JSON: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    settings = _settings(database_url=database_url, tasks=tasks)
    try:
        service = JobService.from_settings(settings)
        try:
            result = service.enqueue(
                task_type, value, queue=queue, priority=priority, max_attempts=max_attempts,
                delay_seconds=delay, idempotency_key=idempotency_key,
            )
        finally:
            service.close()
    except JobqError as exc:
        raise _fail(exc) from None
    job = result.job
    typer.echo(json.dumps({
        "id": job.id, "task_type": job.task_type, "queue": job.queue, "state": str(job.state),
        "created": result.created, "run_at": job.run_at.isoformat(),
    }))


@app.command()
def stats(
    database_url: DbUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Show job counts by state and queue, live workers and queue latency."""
    from rich.console import Console
    from rich.table import Table

    from jobq.service import JobService

    settings = _settings(database_url=database_url)
    try:
        service = JobService.from_settings(settings)
        try:
            s = service.stats()
        finally:
            service.close()
    except JobqError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps({
            "jobs": s.jobs, "queues": s.queues,
            "workers": [{"id": w.id, "host": w.host, "pid": w.pid, "queues": list(w.queues),
                         "last_heartbeat_at": w.last_heartbeat_at.isoformat()}
                        for w in s.workers],
            "oldest_pending_age_seconds": s.oldest_pending_age_seconds,
            "finished_last_minute": s.finished_last_minute,
        }, indent=2))
        return
    console = Console()
    states = list(s.jobs)
    table = Table(title="jobs")
    table.add_column("queue")
    for state in states:
        table.add_column(state, justify="right")
    for queue, counts in s.queues.items():
        table.add_row(queue, *(str(counts[st]) for st in states))
    table.add_row("[bold]all[/bold]", *(f"[bold]{s.jobs[st]}[/bold]" for st in states))
    console.print(table)
    age = s.oldest_pending_age_seconds
    console.print(f"oldest due pending job: {'-' if age is None else f'{age:.1f}s'}   "
                  f"finished in the last minute: {s.finished_last_minute}")
    wt = Table(title=f"live workers ({len(s.workers)})")
    for col in ("id", "host", "pid", "queues", "last heartbeat"):
        wt.add_column(col)
    for w in s.workers:
        wt.add_row(w.id, w.host, str(w.pid), ",".join(w.queues),
                   w.last_heartbeat_at.strftime("%H:%M:%S"))
    console.print(wt)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    logging.captureWarnings(True)
    app(args=argv if argv is not None else sys.argv[1:], prog_name="jobq")
