"""`jobq queues`: list the queues, pause and resume one."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from jobq.cli.options import DbUrl, _settings, service

queues = typer.Typer(
    help="Queues: list them with their counts, pause one (workers stop claiming its jobs; "
    "running ones finish), resume it.",
    no_args_is_help=True,
)


def _queue_json(q: Any) -> dict[str, Any]:
    return {"name": q.name, "paused": q.paused,
            "paused_at": q.paused_at.isoformat() if q.paused_at else None, "jobs": q.jobs}


@queues.command("pause")
def queues_pause(
    name: Annotated[str, typer.Argument(help="The queue")], database_url: DbUrl = None,
) -> None:
    """Pause a queue: workers claim none of its jobs from their next claim on."""
    with service(_settings(database_url=database_url)) as svc:
        typer.echo(json.dumps(_queue_json(svc.pause_queue(name))))


@queues.command("resume")
def queues_resume(
    name: Annotated[str, typer.Argument(help="The queue")], database_url: DbUrl = None,
) -> None:
    """Resume a paused queue (on PostgreSQL its idle workers are woken at once)."""
    with service(_settings(database_url=database_url)) as svc:
        typer.echo(json.dumps(_queue_json(svc.resume_queue(name))))


@queues.command("list")
def queues_list(
    database_url: DbUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Every queue with jobs or ever paused: its jobs by state, and whether it is paused."""
    from rich.console import Console
    from rich.table import Table

    with service(_settings(database_url=database_url)) as svc:
        found = svc.list_queues()
    if as_json:
        typer.echo(json.dumps([_queue_json(q) for q in found], indent=2))
        return
    table = Table(title=f"queues ({len(found)})")
    states = list(found[0].jobs) if found else []
    for col in ("queue", "paused", *states):
        table.add_column(col, justify="left" if col in ("queue", "paused") else "right")
    for q in found:
        paused = f"since {q.paused_at:%Y-%m-%d %H:%M:%S}" if q.paused and q.paused_at else (
            "yes" if q.paused else "")
        table.add_row(q.name, paused, *(str(q.jobs[s]) for s in states))
    Console().print(table)
