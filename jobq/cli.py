"""The `jobq` command: up, api, worker, migrate, enqueue, stats.

Every option falls back to its JOBQ_* environment variable, then to the default.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from jobq.errors import ConfigError, JobqError
from jobq.settings import Settings, load_settings

if TYPE_CHECKING:
    from jobq.service import JobService

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

    with _reported():
        open_store(settings, auto_migrate=True).dispose()


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


@app.command()
def api(
    database_url: DbUrl = None,
    tasks: Tasks = None,
    host: Host = None,
    port: Port = None,
    auto_migrate: AutoMigrate = None,
    processes: Annotated[Optional[int], typer.Option(
        "--processes", "-p",
        help="API processes sharing the port [env JOBQ_API_PROCESSES; default 1]")
    ] = None,
) -> None:
    """Run the REST API server (uvicorn)."""
    from jobq.api.server import serve_api

    settings = _settings(database_url=database_url, tasks=tasks, host=host, port=port,
                         auto_migrate=auto_migrate, api_processes=processes)
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
    try:
        value = json.loads(payload)
    except ValueError as exc:
        typer.secho(f"jobq: --payload is not valid JSON: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    with service(_settings(database_url=database_url, tasks=tasks)) as svc:
        result = svc.enqueue(
            task_type, value, queue=queue, priority=priority, max_attempts=max_attempts,
            delay_seconds=delay, idempotency_key=idempotency_key,
        )
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

    with service(_settings(database_url=database_url)) as svc:
        s = svc.stats()
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


@app.command()
def chaos(
    campaigns: Annotated[Optional[list[str]], typer.Argument(
        help="Campaign numbers (1-12); default: all, or the CI set with --reduced")] = None,
    reduced: Annotated[bool, typer.Option("--reduced", help="Smaller counts; campaigns "
                                          "1-4, 7 and 12 unless others are named")] = False,
    pg_url: Annotated[str, typer.Option("--pg-url", envvar="JOBQ_TEST_POSTGRES_URL",
                                        help="PostgreSQL server to create throw-away "
                                        "databases on")] = "postgresql://postgres@127.0.0.1:5432/test",
    out: Annotated[Optional[str], typer.Option("--out", help="Directory for logs")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Hard limit per campaign, "
                                           "seconds")] = 420,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
) -> None:
    """Run fault campaigns against real processes and print each invariant's figure."""
    from pathlib import Path

    from jobq.chaos.campaigns import CAMPAIGNS
    from jobq.chaos.runner import default_numbers, run

    numbers = campaigns or default_numbers(reduced)
    unknown = [n for n in numbers if n not in CAMPAIGNS]
    if unknown:
        typer.secho(f"jobq: unknown campaign(s) {unknown}; choose from 1-12", fg="red", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run(numbers, pg_url, Path(out) if out else None, reduced, timeout, seed))


@app.command()
def bench(
    db: Annotated[str, typer.Option("--db", help="sqlite, postgresql or both")] = "both",
    pg_url: Annotated[str, typer.Option(
        "--pg-url", envvar="JOBQ_TEST_POSTGRES_URL",
        help="PostgreSQL server on which throw-away databases are created and dropped",
    )] = "postgresql://postgres@127.0.0.1:5432/test",
    json_out: Annotated[str, typer.Option("--json-out", help="Where the results go (JSON)")
                        ] = "bench-results.json",
    quick: Annotated[bool, typer.Option(
        "--quick", help="Tiny sizes: well under a minute per database")] = False,
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", min=1, help="Jobs per drain [20000; quick 500]")] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, max=64, help="Worker processes [2]")] = None,
    concurrency: Annotated[Optional[str], typer.Option(
        "--concurrency", help="Concurrency per worker; several (e.g. 16,64,128) run the "
        "drain once each [64]")] = None,
    enqueue_jobs: Annotated[Optional[int], typer.Option(
        "--enqueue-jobs", min=1, help="Jobs of each one-job-per-call enqueue figure; the "
        "batched ones use 10x as many [5000; quick 200]")] = None,
    batch_size: Annotated[Optional[str], typer.Option(
        "--batch-size", help="Jobs per batch; several (e.g. 100,1000) measure each "
        "[100,1000; quick 50]")] = None,
    api_processes: Annotated[Optional[str], typer.Option(
        "--api-processes", help="API processes for the REST figures; several measure each "
        "[1,2]")] = None,
    clients: Annotated[Optional[int], typer.Option(
        "--clients", min=1, max=256, help="Concurrent REST clients (threads of one client "
        "process) [32]")] = None,
    pickup_samples: Annotated[Optional[int], typer.Option(
        "--pickup-samples", min=1, help="Jobs of the pickup-latency figure [200; quick 25]")
    ] = None,
    finished: Annotated[Optional[str], typer.Option(
        "--growth-finished", help="Finished rows in the table for the growth drains "
        "[100000,1000000; quick 5000,20000]")] = None,
    queued: Annotated[Optional[int], typer.Option(
        "--growth-queued", min=1, help="Size of the large growth drain [100000; quick 2000]")
    ] = None,
    phases: Annotated[str, typer.Option(
        "--phases", help="Comma-separated: enqueue, drain, pickup, growth")
    ] = "enqueue,drain,pickup,growth",
    phase_timeout: Annotated[Optional[float], typer.Option(
        "--phase-timeout", min=1, help="Limit of each phase, seconds [900; quick 60]")] = None,
) -> None:
    """Benchmark enqueue, drain, pickup latency and growth on SQLite and/or PostgreSQL."""
    from pathlib import Path

    from jobq.bench import PHASES, Options, run

    def ints(text: str, what: str) -> list[int]:
        try:
            values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 0:
            typer.secho(f"jobq: {what} takes comma-separated whole numbers", fg="red", err=True)
            raise typer.Exit(2)
        return values

    kinds = {"both": ["sqlite", "postgresql"], "sqlite": ["sqlite"],
             "postgresql": ["postgresql"], "postgres": ["postgresql"]}.get(db)
    wanted = [p.strip() for p in phases.split(",") if p.strip()]
    if kinds is None or not wanted or set(wanted) - set(PHASES):
        typer.secho("jobq: --db takes sqlite, postgresql or both; --phases takes "
                    f"{', '.join(PHASES)}", fg="red", err=True)
        raise typer.Exit(2)
    given: dict[str, Any] = {
        "jobs": jobs, "workers": workers, "enqueue_jobs": enqueue_jobs,
        "batch_sizes": ints(batch_size, "--batch-size") if batch_size else None,
        "api_processes": ints(api_processes, "--api-processes") if api_processes else None,
        "clients": clients, "pickup_samples": pickup_samples,
        "growth_queued": queued, "phase_timeout": phase_timeout,
        "concurrency": ints(concurrency, "--concurrency") if concurrency else None,
        "growth_finished": ints(finished, "--growth-finished") if finished else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    for name, low in (("concurrency", 1), ("batch_sizes", 2), ("api_processes", 1)):
        if given.get(name) and min(given[name]) < low:
            flag = {"batch_sizes": "batch-size"}.get(name, name).replace("_", "-")
            typer.secho(f"jobq: --{flag} must be at least {low}", fg="red", err=True)
            raise typer.Exit(2)
    common = {"dbs": kinds, "pg_url": pg_url, "json_out": Path(json_out), "phases": wanted}
    opts = (Options.quick_preset(**common, **given) if quick
            else Options(**common, **given))
    raise typer.Exit(run(opts))


# -- jobq keys: API keys ----------------------------------------------------------------------

keys = typer.Typer(
    help="API keys of the REST API: create, list, revoke. While no key exists the API is open "
    "(and answers on loopback addresses only).",
    no_args_is_help=True,
)
app.add_typer(keys, name="keys")


def _check_open_api(settings: Settings) -> None:
    from jobq.api.server import check_open_api

    try:
        check_open_api(settings)
    except ConfigError as exc:
        typer.secho(f"jobq: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except JobqError as exc:
        raise _fail(exc) from None


def _key_json(key: Any) -> dict[str, Any]:
    return {
        "prefix": key.prefix, "name": key.name, "queues": list(key.queues),
        "scopes": list(key.scopes), "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


@keys.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. 'billing app'")],
    queue: Annotated[list[str], typer.Option(
        "--queue", help="A queue the key may use (repeat for more); '*' for every queue")],
    scope: Annotated[list[str], typer.Option(
        "--scope", help="enqueue, read or admin (repeat for more); admin implies the others")],
    database_url: DbUrl = None,
) -> None:
    """Create an API key and print its token, once: only a hash of it is kept."""
    with service(_settings(database_url=database_url)) as svc:
        key, token = svc.create_key(name, queue, scope)
    typer.echo(token)
    typer.echo(
        f"created API key {key.prefix} ({key.name!r}; queues {','.join(key.queues)}; scopes "
        f"{','.join(key.scopes)}). The token above is shown only now: store it safely.",
        err=True,
    )


@keys.command("list")
def keys_list(
    database_url: DbUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List API keys (never their secrets), revoked ones included."""
    from rich.console import Console
    from rich.table import Table

    with service(_settings(database_url=database_url)) as svc:
        found = svc.list_keys()
    if as_json:
        typer.echo(json.dumps([_key_json(k) for k in found], indent=2))
        return
    table = Table(title=f"API keys ({sum(k.active for k in found)} active)")
    table.add_column("prefix", no_wrap=True, min_width=12)
    for col in ("name", "queues", "scopes", "created", "last used", "revoked"):
        table.add_column(col, overflow="fold")
    for k in found:
        table.add_row(
            k.prefix, k.name, ",".join(k.queues), ",".join(k.scopes),
            *(t.strftime("%Y-%m-%d %H:%M") if t else "-"
              for t in (k.created_at, k.last_used_at, k.revoked_at)),
        )
    Console().print(table)


@keys.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (as `jobq keys list` shows)")],
    database_url: DbUrl = None,
) -> None:
    """Revoke an API key; API processes refuse it within JOBQ_API_KEY_CACHE_SECONDS."""
    with service(_settings(database_url=database_url)) as svc:
        key = svc.revoke_key(prefix)
        still_active = svc.keys_configured()
    typer.echo(f"revoked API key {key.prefix} ({key.name!r})")
    if not still_active:
        typer.secho(
            "no active API key is left: the API is open again (on loopback addresses only, "
            "unless JOBQ_ALLOW_OPEN_API=true)", fg="yellow", err=True,
        )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    logging.captureWarnings(True)
    app(args=argv if argv is not None else sys.argv[1:], prog_name="jobq")
