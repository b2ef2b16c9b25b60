"""The figures of one system on its database: drain (rates, CPU and database counters per
job), enqueue (single and batch) and pickup latency. Every wait is bounded; every process
started here is stopped by its PID (jobq.harness.Processes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobq.bench.figures import percentile, rates
from jobq.harness import Processes

import stamps
from cpu import PgCpu, db_counters, delta, tree_cpu
from system import System


class Failed(Exception):
    pass


def _start(system: System, setting: str, log_dir: Path) -> tuple[Processes, list]:
    procs = Processes(log_dir, own_sessions=True, pid_file=log_dir / "pids.txt")
    started = [procs.launch(name, argv, env) for name, argv, env in system.workers(setting)]
    return procs, started


def _alive(started: list, what: str) -> None:
    dead = [p.name for p in started if not p.alive()]
    if dead:
        raise Failed(f"{what}: {', '.join(dead)} died (see its log)")


def drain(system: System, setting: str, n: int, log_dir: Path, timeout: float,
          pg: tuple[str, str] | None) -> dict[str, Any]:
    """Queue ``n`` jobs (untimed, or timed as the batch-enqueue figure: returned), then
    start the workers and wait for every job to be done."""
    stamps.clear(system.stamp_dir)
    system.mark()
    batch_s = system.enqueue_batch(n, 1000, 0, sync=setting == "sync")
    before = db_counters(*pg) if pg else None
    procs, started = _start(system, setting, log_dir)
    try:
        deadline = time.monotonic() + timeout
        pgcpu = PgCpu(*pg) if pg else None
        while not any(p.stat().st_size for p in system.stamp_dir.glob("start-*.txt")):
            _alive(started, "drain start")
            if time.monotonic() > deadline:
                raise Failed("drain: no job started before the timeout")
            time.sleep(0.005)
        cpu0 = tree_cpu([p.pid for p in started])
        if pgcpu:
            pgcpu.start()
        while system.backlog():
            _alive(started, "drain")
            if pgcpu:
                pgcpu.snapshot()
            if time.monotonic() > deadline:
                raise Failed(f"drain: {system.backlog()} jobs left after {timeout:.0f}s")
            time.sleep(0.1)
        done = system.done_times()
        while len(done) < n and time.monotonic() < deadline:
            time.sleep(0.1)
            done = system.done_times()
        worker_cpu = tree_cpu([p.pid for p in started]) - cpu0
        pg_cpu = pgcpu.used() if pgcpu else None
    finally:
        procs.stop()
    begun = list(stamps.read(system.stamp_dir).values())
    if len(done) < n:
        raise Failed(f"drain: {len(done)} of {n} jobs recorded done")
    extra = len(done) - n  # PgQueuer may log a late completion of the pickup phase's jobs
    done = sorted(done)[extra:]
    out: dict[str, Any] = {"jobs": n, "setting": system.settings[setting][0],
                           **rates(begun, done),
                           "worker_cpu_us_per_job": round(worker_cpu / n * 1e6, 1),
                           "extra_done_records": extra}
    if batch_s is not None:
        out["batch_enqueue_jobs_per_s"] = round(n / batch_s, 1)
    if pg:
        out["pg_cpu_us_per_job"] = round(pg_cpu / n * 1e6, 1)
        d = delta(db_counters(*pg), before)
        out["xacts_per_job"] = round((d["xact_commit"] + d["xact_rollback"]) / n, 2)
        out["tuples_written_per_job"] = round(
            (d["tup_inserted"] + d["tup_updated"] + d["tup_deleted"]) / n, 2)
    return out


def enqueue_single(system: System, n: int) -> dict[str, Any]:
    seconds = system.enqueue_single(n, 10_000_000)
    return {"jobs": n, "jobs_per_s": round(n / seconds, 1)}


def enqueue_rest(system: System, n: int, log_dir: Path, timeout: float) -> dict[str, Any]:
    """jobq only: ``POST /jobs`` one job per request, sequential, one keep-alive connection,
    against ``python -m jobq api`` started here (each job committed before its 201)."""
    import httpx

    from jobq.harness import free_port, wait_for

    port = free_port()
    procs = Processes(log_dir, own_sessions=True, pid_file=log_dir / "pids.txt")
    api = procs.launch("jobq-api", *system.api(port))
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            def up() -> bool:
                _alive([api], "the API")
                try:
                    return http.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, 60, "the API to answer")
            body = {"task_type": "cmp_noop", "payload": {"k": 0}}
            for _ in range(50):  # warm-up: connections, prepared statements
                http.post("/jobs", json=body).raise_for_status()
            began = time.perf_counter()
            for k in range(n):
                if time.perf_counter() - began > timeout:
                    raise Failed(f"REST enqueue: {k} of {n} jobs in {timeout:.0f}s")
                http.post("/jobs", json={"task_type": "cmp_noop", "payload": {"k": k}}
                          ).raise_for_status()
            seconds = time.perf_counter() - began
    finally:
        procs.stop()
    return {"jobs": n, "jobs_per_s": round(n / seconds, 1)}


def pickup(system: System, samples: int, gap_ms: float, log_dir: Path, timeout: float
           ) -> dict[str, Any]:
    """Idle workers (default settings); one job every ``gap_ms``; from the return of the
    enqueue call to the start of the handler, both time.time() on this host."""
    stamps.clear(system.stamp_dir)
    system.mark()
    procs, started = _start(system, "default", log_dir)
    try:
        deadline = time.monotonic() + timeout
        system.enqueue_paced(1, 0, 20_000_000)  # a warm-up job, then idle
        while not stamps.read(system.stamp_dir):
            _alive(started, "pickup start")
            if time.monotonic() > deadline:
                raise Failed("pickup: the warm-up job did not run")
            time.sleep(0.05)
        time.sleep(2.0)
        returned = system.enqueue_paced(samples, gap_ms / 1000, 30_000_000)
        while len(stamps.read(system.stamp_dir)) < samples + 1:
            _alive(started, "pickup")
            if time.monotonic() > deadline:
                raise Failed("pickup: not every job ran before the timeout")
            time.sleep(0.1)
    finally:
        procs.stop()
    began = stamps.read(system.stamp_dir)
    lat = [(began[str(30_000_000 + k)] - t) * 1000 for k, t in enumerate(returned)]
    return {"samples": samples, "gap_ms": gap_ms,
            "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
            "max_ms": round(max(lat), 2)}
