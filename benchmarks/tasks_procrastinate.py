"""Procrastinate's app and no-op task (``procrastinate --app=tasks_procrastinate.app``)."""

import os

from procrastinate import App, PsycopgConnector

from stamps import stamp

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_PG_URL", "")))


@app.task(name="cmp_noop")
async def cmp_noop(k: int) -> None:
    stamp(k)
