"""The tools beside the product: `jobq chaos` (fault campaigns) and `jobq bench`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer


def chaos(
    campaigns: Annotated[Optional[list[str]], typer.Argument(
        help="Campaign numbers (1-18); default: all, or the CI set with --reduced")] = None,
    reduced: Annotated[bool, typer.Option("--reduced", help="Smaller counts; campaigns "
                                          "1-4, 7, 12 and 16-18 unless others are named")] = False,
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
        typer.secho(f"jobq: unknown campaign(s) {unknown}; choose from {', '.join(CAMPAIGNS)}",
                    fg="red", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run(numbers, pg_url, Path(out) if out else None, reduced, timeout, seed))


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
