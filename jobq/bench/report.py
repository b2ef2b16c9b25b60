"""The summary of a run: the table of figures and the settings it ran with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
    else:
        text = f"{value:,}"
    return text + unit


def report_rows(doc: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(figure, {database: text}) rows of the summary table."""
    rows: list[tuple[str, dict[str, str]]] = []
    dbs = doc["databases"]

    def add(name: str, get: Callable[[dict[str, Any]], Any], unit: str = "") -> None:
        cells = {}
        for kind, res in dbs.items():
            try:
                cells[kind] = _fmt(get(res), unit)
            except (KeyError, IndexError, TypeError):
                cells[kind] = "-"
        if any(v != "-" for v in cells.values()):
            rows.append((name, cells))

    o = doc["options"]
    c = o["clients"]
    add("enqueue, Python client, 1 job/call (jobs/s)",
        lambda r: r["enqueue"]["python_single"]["jobs_per_s"])
    for i, b in enumerate(o["batch_sizes"]):
        add(f"enqueue, Python client, batches of {b:,} (jobs/s)",
            lambda r, i=i: r["enqueue"]["python_batch"][i]["jobs_per_s"])
    for j, k in enumerate(o["api_processes"]):
        api = f"{k} API process{'es' if k > 1 else ''}"
        add(f"enqueue, REST, 1 job/request, {c} clients, {api} (jobs/s)",
            lambda r, j=j: r["enqueue"]["rest"][j]["single"]["jobs_per_s"])
        for i, b in enumerate(o["batch_sizes"]):
            add(f"enqueue, REST, batches of {b:,}, {c} clients, {api} (jobs/s)",
                lambda r, i=i, j=j: r["enqueue"]["rest"][j]["batch"][i]["jobs_per_s"])
    some = next(iter(dbs.values()), {})
    for i, run in enumerate(some.get("drain", [])):
        label = f"drain {run['jobs']:,} no-op jobs, {run['workers']}×{run['concurrency']}"
        add(f"{label}: first claim → last done (jobs/s)",
            lambda r, i=i: r["drain"][i]["jobs_per_s"])
        add(f"{label}: steady state, middle 80% (jobs/s)",
            lambda r, i=i: r["drain"][i]["steady_jobs_per_s"])
    add("pickup latency p50 (ms)", lambda r: r["pickup"]["p50_ms"])
    add("pickup latency p99 (ms)", lambda r: r["pickup"]["p99_ms"])
    growth = some.get("growth", {})
    for i, run in enumerate(growth.get("finished", [])):
        add(f"growth: drain {run['jobs']:,} with {run['finished_before']:,} finished rows "
            "(jobs/s, steady)",
            lambda r, i=i: r["growth"]["finished"][i]["steady_jobs_per_s"])
    for i, run in enumerate(growth.get("queued", [])):
        add(f"growth: drain of {run['jobs']:,} queued jobs (jobs/s, steady)",
            lambda r, i=i: r["growth"]["queued"][i]["steady_jobs_per_s"])
    add("peak memory, API process, 1 process (MB)",
        lambda r: r["memory"]["api_peak_rss_kb"] / 1024)
    add("peak memory, worker process, max (MB)",
        lambda r: r["memory"]["worker_peak_rss_kb_max"] / 1024)
    return rows


def settings_lines(doc: dict[str, Any]) -> list[str]:
    lines = [f"machine: {doc['machine']['cpu_count']} cores (os.cpu_count()), "
             f"Python {doc['machine']['python']}"]
    for kind, res in doc["databases"].items():
        s = res.get("settings")
        if not s:
            continue
        if kind == "postgresql":
            lines.append(f"postgresql {s['server_version']}: fsync={s['fsync']} "
                         f"synchronous_commit={s['synchronous_commit']} "
                         f"shared_buffers={s['shared_buffers']}")
        else:
            lines.append(f"sqlite {s['sqlite_version']}: journal_mode={s['journal_mode']} "
                         f"synchronous={s['synchronous']}")
    p = doc["process_settings"]
    lines.append(f"jobq processes: poll interval {p['poll_interval_seconds']}s, lease "
                 f"{p['lease_seconds']}s, pool {p['db_pool_size']}+{p['db_max_overflow']}; "
                 "REST jobs are committed before the 201")
    return lines


def print_report(console: Any, doc: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="jobq bench")
    table.add_column("figure")
    kinds = list(doc["databases"])
    for kind in kinds:
        table.add_column(kind, justify="right")
    for name, cells in report_rows(doc):
        table.add_row(name, *(cells.get(k, "-") for k in kinds))
    console.print(table)
    for line in settings_lines(doc):
        console.print(line)
    for kind, res in doc["databases"].items():
        for err in res.get("errors", []):
            console.print(f"[red]{kind}: {err}[/red]")
