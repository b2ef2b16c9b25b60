"""`jobq jobs`: list and show jobs, cancel and retry one or every job that matches a filter
(with a progress bar and a count), with the filters of ``GET /jobs``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Optional

import typer

from jobq.cli.options import DbUrl, _settings, service
from jobq.types import Job

jobs = typer.Typer(
    help="Jobs: list, show, cancel and retry them, one by id or every one that matches "
    "--state, --queue and --task.",
    no_args_is_help=True,
)

State = Annotated[Optional[str], typer.Option("--state", help="pending, running, done, "
                                              "failed or cancelled")]
Queue = Annotated[Optional[str], typer.Option("--queue", help="Only jobs of this queue")]
Task = Annotated[Optional[str], typer.Option("--task", help="Only jobs of this task")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
JobIdArg = Annotated[Optional[int], typer.Argument(help="One job, by id (else the filters)")]
#: Jobs per bulk request to the store: the progress bar moves by this much.
STEP = 500


def _when(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _job_json(job: Job, *, attempts: bool = False) -> dict[str, Any]:
    out = {
        "id": job.id, "task_type": job.task_type, "queue": job.queue, "state": str(job.state),
        "priority": job.priority, "attempts": job.attempts, "max_attempts": job.max_attempts,
        "run_at": _when(job.run_at), "created_at": _when(job.created_at),
        "started_at": _when(job.started_at), "finished_at": _when(job.finished_at),
        "worker_id": job.worker_id, "payload": job.payload, "result": job.result,
        "last_error": job.last_error,
    }
    if attempts:
        out["attempt_log"] = [{
            "attempt": a.attempt, "worker_id": a.worker_id, "outcome": str(a.outcome),
            "started_at": _when(a.started_at), "finished_at": _when(a.finished_at),
            "error": a.error, "traceback": a.traceback,
        } for a in job.attempt_log]
    return out


@jobs.command("list")
def jobs_list(
    state: State = None, queue: Queue = None, task: Task = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    cursor: Annotated[Optional[str], typer.Option("--cursor", help="next_cursor of the "
                                                  "previous page")] = None,
    as_json: AsJson = False, database_url: DbUrl = None,
) -> None:
    """List jobs, newest first."""
    from rich.console import Console
    from rich.table import Table

    with service(_settings(database_url=database_url)) as svc:
        page = svc.list_jobs(state=state, queue=queue, task_type=task, limit=limit,
                             cursor=cursor)
    if as_json:
        typer.echo(json.dumps({"items": [_job_json(j) for j in page.items],
                               "next_cursor": page.next_cursor}, indent=2))
        return
    table = Table(title=f"jobs ({len(page.items)})")
    for col in ("id", "task", "queue", "state", "attempts", "run at (UTC)", "last error"):
        table.add_column(col, overflow="fold")
    for j in page.items:
        table.add_row(str(j.id), j.task_type, j.queue, str(j.state),
                      f"{j.attempts}/{j.max_attempts}", j.run_at.strftime("%Y-%m-%d %H:%M:%S"),
                      (j.last_error or "")[:80])
    console = Console()
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}")


@jobs.command("show")
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="The job's id")],
    as_json: AsJson = False, database_url: DbUrl = None,
) -> None:
    """Show one job with every attempt, its error and traceback, its parents and children."""
    from rich.console import Console
    from rich.markup import escape

    with service(_settings(database_url=database_url)) as svc:
        job = svc.get(job_id)
        parents, children = svc.relatives(job_id)
    data = {**_job_json(job, attempts=True), "parents": parents, "children": children}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    console = Console()
    for key, value in data.items():
        if key != "attempt_log":
            shown = json.dumps(value) if key in ("payload", "result") else value
            console.print(f"[bold]{key}[/bold]: {escape(str(shown))}")
    for a in data["attempt_log"]:
        console.print(f"[bold]attempt {a['attempt']}[/bold] {a['outcome']} on "
                      f"{escape(str(a['worker_id']))}, {a['started_at']} → {a['finished_at']}")
        if a["error"]:
            console.print(escape(a["error"]))
        if a["traceback"]:
            console.print(escape(a["traceback"]), style="dim")


def _bulk(action: str, job_id: int | None, state: str | None, queue: str | None,
          task: str | None, limit: int, as_json: bool, database_url: str | None) -> None:
    """Cancel or retry one job, or every match, a chunk at a time behind a progress bar."""
    with service(_settings(database_url=database_url)) as svc:
        if job_id is not None:
            if state or queue or task:
                typer.secho("jobq: give a job id or filters, not both", fg="red", err=True)
                raise typer.Exit(2)
            job = svc.cancel(job_id) if action == "cancel" else svc.retry(job_id)
            typer.echo(json.dumps(_job_json(job)))
            return
        run = svc.cancel_matching if action == "cancel" else svc.retry_matching
        states = ([state] if state else ["pending", "running"] if action == "cancel"
                  else ["failed"])
        # A first call checks the filter (its error is the service's), then the bar shows
        # the rest.
        first = run(state=state, queue=queue, task_type=task, limit=min(STEP, limit))
        changed, more = first.changed, first.more
        total = min(limit, changed + svc.count_matching(states=states, queue=queue,
                                                        task_type=task))
        with _progress(action, total, changed, show=more and not as_json) as moved:
            while more and changed < limit:
                r = run(state=state, queue=queue, task_type=task,
                        limit=min(STEP, limit - changed))
                changed, more = changed + r.changed, r.more
                moved(changed)
                if r.changed == 0:
                    break  # what is left is skipped (locked or refused), not waiting
    done_word = "cancelled" if action == "cancel" else "retried"
    if as_json:
        typer.echo(json.dumps({"changed": changed, "more": more}))
    else:
        typer.echo(f"{changed} job(s) {done_word}" + (" (more match: run it again)"
                                                      if more else ""))


@contextmanager
def _progress(action: str, total: int, start: int, *, show: bool
              ) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (none for JSON output or a single chunk): yields the
    function that moves it to a count."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"{action}…", total=total, completed=start)
        yield lambda n: bar.update(task, completed=n)


@jobs.command("cancel")
def jobs_cancel(
    job_id: JobIdArg = None, state: State = None, queue: Queue = None, task: Task = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most jobs to cancel")] = 100000,
    as_json: AsJson = False, database_url: DbUrl = None,
) -> None:
    """Cancel a job, or every pending or running job that matches the filters."""
    _bulk("cancel", job_id, state, queue, task, limit, as_json, database_url)


@jobs.command("retry")
def jobs_retry(
    job_id: JobIdArg = None, state: State = None, queue: Queue = None, task: Task = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most jobs to retry")] = 100000,
    as_json: AsJson = False, database_url: DbUrl = None,
) -> None:
    """Retry a job, or every failed (or, with --state cancelled, cancelled) job that
    matches the filters."""
    _bulk("retry", job_id, state, queue, task, limit, as_json, database_url)
