"""The `jobq` command: up, api, worker, migrate, enqueue, stats, schedules, and the groups
jobs, keys and queues.

Every option falls back to its JOBQ_* environment variable, then to the default.
"""

from __future__ import annotations

import logging
import sys

import typer

from jobq.cli import jobs, serve, tools
from jobq.cli.jobops import jobs as jobs_group
from jobq.cli.keys import keys
from jobq.cli.queues import queues

app = typer.Typer(
    help="jobq: a fault-tolerant, SQL-backed background job system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Registered in one place so that the order `jobq --help` lists them in is seen here.
app.command()(serve.up)
app.command()(serve.api)
app.command()(serve.worker)
app.command("migrate")(serve.migrate_cmd)
app.command()(jobs.enqueue)
app.command()(jobs.stats)
app.command()(jobs.schedules)
app.command()(tools.chaos)
app.command()(tools.bench)
app.add_typer(jobs_group, name="jobs")
app.add_typer(keys, name="keys")
app.add_typer(queues, name="queues")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    logging.captureWarnings(True)
    app(args=argv if argv is not None else sys.argv[1:], prog_name="jobq")
