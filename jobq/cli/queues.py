"""`jobq queues`: list the queues, pause and resume one, set its limits."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from jobq.cli.options import DbUrl, _settings, service

queues = typer.Typer(
    help="Queues: list them with their counts, pause one (workers stop claiming its jobs; "
    "running ones finish), resume it.",
    no_args_is_help=True,
)


def _queue_json(q: Any) -> dict[str, Any]:
    return {"name": q.name, "paused": q.paused,
            "paused_at": q.paused_at.isoformat() if q.paused_at else None, "jobs": q.jobs,
            "concurrency": q.concurrency, "rate": q.rate, "burst": q.burst}


def _limits_text(q: Any) -> str:
    parts = []
    if q.concurrency is not None:
        parts.append(f"≤{q.concurrency} running")
    if q.rate is not None:
        parts.append(f"{q.rate:g}/s (burst {q.burst})")
    return ", ".join(parts)


@queues.command("set")
def queues_set(
    name: Annotated[str, typer.Argument(help="The queue")],
    concurrency: Annotated[Optional[int], typer.Option(
        "--concurrency", min=1, help="At most this many of its jobs run at once, across "
        "the cluster")] = None,
    rate: Annotated[Optional[float], typer.Option(
        "--rate", min=0.0, help="At most this many of its jobs start per second")] = None,
    burst: Annotated[Optional[int], typer.Option(
        "--burst", min=1, help="Starts allowed at once under --rate (default: the rate)")] = None,
    no_concurrency: Annotated[bool, typer.Option("--no-concurrency",
                                                 help="Lift the concurrency limit")] = False,
    no_rate: Annotated[bool, typer.Option("--no-rate", help="Lift the rate limit")] = False,
    database_url: DbUrl = None,
) -> None:
    """Set a queue's limits across the cluster (the others it has stay)."""
    with service(_settings(database_url=database_url)) as svc:
        current = svc.queue(name)
        new_rate = None if no_rate else (rate if rate is not None else current.rate)
        new_burst = None if new_rate is None else (
            burst if burst is not None else (None if rate is not None else current.burst))
        q = svc.set_queue_limits(
            name, concurrency=None if no_concurrency else (
                concurrency if concurrency is not None else current.concurrency),
            rate=new_rate, burst=new_burst)
        typer.echo(json.dumps(_queue_json(q)))


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
    # Waiting jobs (workflows) get a column only where there are some: the table stays
    # within a terminal's width otherwise.
    states = [s for s in (found[0].jobs if found else ())
              if s != "waiting" or any(q.jobs.get(s) for q in found)]
    for col in ("queue", "paused", "limits", *states):
        table.add_column(col, justify="left" if col in ("queue", "paused", "limits")
                         else "right")
    for q in found:
        paused = f"since {q.paused_at:%Y-%m-%d %H:%M:%S}" if q.paused and q.paused_at else (
            "yes" if q.paused else "")
        table.add_row(q.name, paused, _limits_text(q), *(str(q.jobs[s]) for s in states))
    Console().print(table)
