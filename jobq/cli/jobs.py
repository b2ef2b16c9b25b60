"""Commands on the jobs: enqueue one, show the counts, list the periodic jobs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Optional

import typer

from jobq.cli.options import DbUrl, Tasks, _settings, service


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
    unique_key: Annotated[Optional[str], typer.Option(
        "--unique-key", help="While a job of the queue with this key is pending or running, "
        "print that one instead of making another")] = None,
    unique_for: Annotated[Optional[float], typer.Option(
        "--unique-for", min=0, help="Seconds the unique key stays taken after its job "
        "finished")] = None,
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
            unique_key=unique_key, unique_for=unique_for,
        )
    job = result.job
    typer.echo(json.dumps({
        "id": job.id, "task_type": job.task_type, "queue": job.queue, "state": str(job.state),
        "created": result.created, "run_at": job.run_at.isoformat(),
    }))


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


def schedules(
    database_url: DbUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List the periodic jobs the workers declared: task, expression, next and last run."""
    from rich.console import Console
    from rich.table import Table

    with service(_settings(database_url=database_url)) as svc:
        found = svc.list_schedules()

    def when(t: datetime | None) -> str | None:
        return None if t is None else t.isoformat()

    if as_json:
        typer.echo(json.dumps([{
            "name": s.name, "task_type": s.task_type, "queue": s.queue,
            "expression": s.expression, "tz": s.tz, "payload": s.payload,
            "catch_up": s.catch_up, "next_run_at": when(s.next_run_at),
            "last_run_at": when(s.last_run_at), "last_job_id": s.last_job_id,
            "created_at": when(s.created_at), "declared_at": when(s.declared_at),
        } for s in found], indent=2))
        return
    table = Table(title=f"schedules ({len(found)})")
    for col in ("name", "task", "queue", "expression", "next run (UTC)", "last run (UTC)",
                "last job", "declared (UTC)"):
        table.add_column(col)

    def short(t: datetime | None) -> str:
        return "-" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")

    for s in found:
        expression = s.expression + (f" ({s.tz})" if s.tz else "")
        table.add_row(s.name, s.task_type, s.queue, expression, short(s.next_run_at),
                      short(s.last_run_at), "-" if s.last_job_id is None else str(s.last_job_id),
                      short(s.declared_at))
    Console().print(table)
