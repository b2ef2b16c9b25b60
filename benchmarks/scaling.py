"""jobq's scaling curve in one run: the drain against 1, 2, 4, 8 worker processes and REST
enqueue against 1, 2, 4 API processes, with where the machine's CPU goes at each point.

    benchmarks/scaling.sh                 # or: benchmarks/.venv/bin/python benchmarks/scaling.py
    benchmarks/scaling.sh --jobs 500 --rest-jobs 300 --workers 1,2 --apis 1,2 --rounds 1

Interleaved rounds: each round runs every point once, in its own shuffled order (seeded), each
point on a fresh throw-away database (dropped afterwards). Per point: jobs/s over the middle
80 % of the jobs (from their own database timestamps), the CPU seconds of the PostgreSQL
backends of that database, of the server's own processes, of the jobq processes, of the
client, and the machine's total from /proc/stat (idle included), all over that same
interval; median and range over the rounds, and the ratio to the 1-process point of the same
round. See benchmarks/README.md, "scaling.py".
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import median
from typing import Any

import psycopg

from jobq.bench.context import bench_cluster
from jobq.bench.figures import newest_id, queue_empty, rates
from jobq.bench.options import NOOP, TASKS_MODULE
from jobq.harness import Cluster, PgDatabases, redact, wait_until
from jobq.settings import Settings, load_settings
from jobq.types import JobState

from cpu import PgCpu, db_counters, delta, proc_cpu, tree_cpu

HERE = Path(__file__).resolve().parent
CORES = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")
DEFAULT_CONCURRENCY = Settings.model_fields["concurrency"].default


class Failed(Exception):
    """A point that could not be measured (a process died, a wait timed out)."""


# -- the CPU, sampled ----------------------------------------------------------------------


def proc_stat() -> dict[str, float]:
    """The machine's CPU seconds (all cores) from /proc/stat: busy, idle (with iowait), all."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f
    return {"machine_busy": (user + nice + system + irq + softirq + steal) / TICK,
            "machine_idle": (idle + iowait) / TICK, "machine_all": sum(f) / TICK}


class PgCpuKept(PgCpu):
    """PgCpu (the backends of one database) over one kept admin connection instead of one per
    snapshot, plus the server's own processes (no database: WAL writer, checkpointer,
    background writer, launchers), which serve every database of the server."""

    def __init__(self, admin_url: str, database: str) -> None:
        super().__init__(admin_url, database)
        self.conn = psycopg.connect(admin_url, autocommit=True, connect_timeout=10)
        self.server: dict[int, float] = {}
        self.server_base: dict[int, float] | None = None

    def _pids(self) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid, datname IS NULL FROM pg_stat_activity"
            " WHERE datname = %s OR (datname IS NULL AND backend_type <> 'client backend')",
            (self.database,)).fetchall()
        for pid, _ in (r for r in rows if r[1]):
            self.server[pid] = proc_cpu(pid, with_reaped=False)
        if self.server_base is None:
            self.server_base = dict(self.server)
        return [pid for pid, aux in rows if not aux]

    def server_used(self) -> float:
        base = self.server_base or {}
        return sum(v - base.get(pid, 0.0) for pid, v in self.server.items())

    def close(self) -> None:
        self.conn.close()


class Sampler:
    """Counters sampled over time (CPU seconds, cumulative), read back at any instant by
    linear interpolation, so that every share is taken over exactly the throughput's interval
    (the database's timestamps; PostgreSQL runs on this machine, so its clock is ours)."""

    def __init__(self, pg: PgCpuKept, jobq: list[int], client: list[int] | None = None) -> None:
        self.pg, self.jobq, self.client = pg, jobq, client or []
        self.times: list[float] = []
        self.rows: list[dict[str, float]] = []
        self.cost = 0.0  # wall seconds spent sampling
        pg.start()

    def sample(self) -> None:
        t0 = time.time()
        me = os.times()
        row = {**proc_stat(), "jobq": tree_cpu(self.jobq) if self.jobq else 0.0,
               "client": tree_cpu(self.client) if self.client else 0.0,
               "harness": me.user + me.system, "pg_db": self.pg.used(),
               "pg_server": self.pg.server_used()}
        self.cost += time.time() - t0
        if self.rows:  # a process that exited and was reaped reads 0: keep its last reading
            for k in ("jobq", "client"):
                row[k] = max(row[k], self.rows[-1][k])
        self.times.append((t0 + time.time()) / 2)
        self.rows.append(row)

    def at(self, t: float) -> dict[str, float]:
        i = bisect.bisect_left(self.times, t)
        if i <= 0:
            return self.rows[0]
        if i >= len(self.times):
            return self.rows[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        w = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        a, b = self.rows[i - 1], self.rows[i]
        return {k: a[k] + w * (b[k] - a[k]) for k in a}

    def shares(self, t0: float, t1: float, jobs: int) -> dict[str, Any]:
        """Where the machine's CPU went between t0 and t1, as fractions of wall × cores."""
        if not self.times or t1 <= t0:
            return {}
        a, b = self.at(max(t0, self.times[0])), self.at(min(t1, self.times[-1]))
        wall = min(t1, self.times[-1]) - max(t0, self.times[0])
        if wall <= 0:
            return {}
        d = {k: b[k] - a[k] for k in a}
        cap = wall * CORES
        client = d["client"] + d["harness"]
        out = {
            "cpu_interval_s": round(wall, 3),
            "samples_in_interval": sum(1 for t in self.times if t0 <= t <= t1),
            "pg_share": d["pg_db"] / cap,
            "pg_server_share": d["pg_server"] / cap,
            "jobq_share": d["jobq"] / cap,
            "client_share": client / cap,
            "client_process_share": d["client"] / cap,
            "harness_share": d["harness"] / cap,
            "idle_share": d["machine_idle"] / cap,
            "machine_busy_share": d["machine_busy"] / cap,
            "machine_total_share": d["machine_all"] / cap,  # /proc/stat's own check: ≈ 1
            "other_share": (d["machine_busy"] - d["pg_db"] - d["pg_server"] - d["jobq"]
                            - client) / cap,
            "pg_cpu_ms_per_1k_jobs": d["pg_db"] / jobs * 1e6 if jobs else None,
            "jobq_cpu_ms_per_1k_jobs": d["jobq"] / jobs * 1e6 if jobs else None,
        }
        out["sample_ms"] = 1000 * self.cost / len(self.times)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


# -- the jobs' own timestamps --------------------------------------------------------------


def jobs_since(store: Any, first_id: int, state: JobState) -> list[Any]:
    """The jobs in ``state`` with ids from ``first_id`` on (paged newest first)."""
    out, cursor = [], None
    while True:
        page = store.list_jobs(state=state, limit=5000, cursor=cursor)
        for job in page.items:
            if job.id < first_id:
                return out
            out.append(job)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def middle(times: list[float]) -> tuple[float, float, int]:
    """The middle 80 % of ``times`` (as jobq.bench.figures.rates takes it): from, to, count."""
    f = sorted(times)
    n = len(f)
    lo, hi = int(n * 0.1), max(int(n * 0.9) - 1, 0)
    return f[lo], f[hi], hi - lo


# -- one point -----------------------------------------------------------------------------


class Run:
    """What a run has started (stopped by PID on the way out, also on Ctrl-C), its options and
    work directory."""

    def __init__(self, o: argparse.Namespace, work: Path) -> None:
        self.o, self.work = o, work
        self.clusters: list[Cluster] = []
        #: Batch enqueue rate (jobs/s) of the last fill, to date the warm start's jobs.
        self.fill_rate = 5_000.0

    def calibrate(self) -> None:
        """Time a fill of 5,000 jobs on a database of its own, so that the first warm drain
        does not wait on a guess."""
        db = PgDatabases(self.o.pg_url, name=f"scal_calibrate_{uuid.uuid4().hex[:8]}")
        db.create()
        try:
            service = self.service(db.url())
            try:
                fill(self, service, 1000, None)  # warm: prepared statements, the pool
                self.fill_rate = 5000 / fill(self, service, 5000, None)
            finally:
                service.close()
        finally:
            db.drop()

    def cluster(self, url: str, tag: str) -> Cluster:
        d = self.work / tag
        d.mkdir(parents=True, exist_ok=True)
        c = bench_cluster(d, url)
        self.clusters.append(c)
        return c

    def stop(self, c: Cluster) -> None:
        c.stop()
        if c in self.clusters:
            self.clusters.remove(c)

    def stop_all(self) -> None:
        for c in list(self.clusters):
            self.stop(c)

    def service(self, url: str) -> Any:
        from jobq.service import JobService

        return JobService.from_settings(load_settings(database_url=url, tasks=TASKS_MODULE))

    def deadline(self) -> float:
        return time.monotonic() + self.o.timeout

    def check(self, deadline: float, what: str, procs: list[Any] = ()) -> None:
        dead = [p.name for p in procs if not p.alive()]
        if dead:
            raise Failed(f"{what}: {', '.join(dead)} exited (logs in {self.work})")
        if time.monotonic() > deadline:
            raise Failed(f"{what}: timed out after {self.o.timeout:.0f}s")


def fill(run: Run, service: Any, n: int, run_at: datetime | None) -> float:
    """Queue ``n`` no-op jobs in batches of 1,000; seconds taken."""
    deadline = run.deadline()
    began = time.perf_counter()
    for lo in range(0, n, 1000):
        run.check(deadline, "queueing jobs")
        extra = {"run_at": run_at} if run_at else {}
        service.enqueue_many([{"task_type": NOOP, "payload": {"i": i}, **extra}
                              for i in range(lo, min(lo + 1000, n))])
    return time.perf_counter() - began


def drain_point(run: Run, workers: int, tag: str) -> dict[str, Any]:
    """W worker processes drain N queued no-op jobs.

    warm (default): the workers start on the empty database and register; then N jobs are
    queued (untimed) due a moment after the queueing ends, and one more job due at once is
    queued after that moment: its NOTIFY wakes every idle worker at the same time, so the
    drain begins with all W processes up and none still importing. cold: the N jobs are
    queued first and the workers start on the full queue (their start-up overlaps the drain).
    """
    o = run.o
    db = PgDatabases(o.pg_url, name=f"scal_{tag}_{uuid.uuid4().hex[:8]}")
    db.create()
    out: dict[str, Any] = {"kind": "drain", "processes": workers, "concurrency": o.concurrency,
                           "start": o.start}
    pg = None
    try:
        service = run.service(db.url())
        try:
            store = service.store
            first_id = newest_id(store) + 1
            n = o.jobs
            if o.start == "cold":
                out["fill_s"] = round(fill(run, service, n, None), 3)
            cluster = run.cluster(db.url(), tag)
            deadline = run.deadline()
            procs = [cluster.start_worker(i, "--concurrency", str(o.concurrency))
                     for i in range(workers)]
            pg = PgCpuKept(o.pg_url, db.name)
            sampler = Sampler(pg, [p.pid for p in procs])
            before = db_counters(o.pg_url, db.name)
            sampler.sample()
            if o.start == "warm":
                def registered() -> bool:
                    run.check(deadline, "workers registering", procs)
                    return len(service.stats().workers) >= workers

                wait_until(registered, o.timeout, 0.1)
                if len(service.stats().workers) < workers:
                    raise Failed(f"only {len(service.stats().workers)} of {workers} workers "
                                 f"registered within {o.timeout:.0f}s")
                margin = 1.5 * n / run.fill_rate + 0.5
                due = datetime.now(timezone.utc) + timedelta(seconds=margin)
                took = fill(run, service, n, due)
                if took > 0:
                    run.fill_rate = n / took
                out["fill_s"] = round(took, 3)
                late = datetime.now(timezone.utc) - due
                out["fill_overran_due_s"] = round(max(late.total_seconds(), 0.0), 3)
                while datetime.now(timezone.utc) < due + timedelta(seconds=0.05):
                    sampler.sample()
                    time.sleep(0.02)
                service.enqueue(NOOP, {"i": n})  # due now: its NOTIFY wakes the workers
                n += 1
            while not queue_empty(store):
                run.check(deadline, f"drain ({workers} workers)", procs)
                sampler.sample()
                time.sleep(o.sample_interval)
            sampler.sample()
            done = jobs_since(store, first_id, JobState.DONE)
        finally:
            for c in list(run.clusters):
                run.stop(c)
            service.close()
        after = counters_after(o.pg_url, db.name, deadline)
    finally:
        if pg is not None:
            pg.close()
        db.drop()
    if len(done) != n:
        raise Failed(f"drain: {len(done)} of {n} jobs done")
    started = [j.started_at.timestamp() for j in done]
    finished = [j.finished_at.timestamp() for j in done]
    t0, t1, k = middle(finished)
    first_run = {}
    for j in done:
        t = j.started_at.timestamp()
        first_run[j.worker_id] = min(first_run.get(j.worker_id, t), t)
    all_busy = max(first_run.values())
    d = delta(after, before)
    out.update({
        "jobs": n, **rates(started, finished),
        "processes_that_ran_jobs": len(first_run),
        # From the first job's start to the last process's first job: the drain's ramp.
        "ramp_s": round(all_busy - min(started), 3),
        "done_before_all_ran": sum(1 for t in finished if t < all_busy),
        "xacts_per_job": round((d["xact_commit"] + d["xact_rollback"]) / n, 3),
        "tuples_written_per_job": round(
            (d["tup_inserted"] + d["tup_updated"] + d["tup_deleted"]) / n, 3),
        **sampler.shares(t0, t1, k),
    })
    return out


def rest_point(run: Run, apis: int, tag: str) -> dict[str, Any]:
    """``jobq api --processes A`` on a fresh database; the REST client process
    (jobq.bench.rest_client: threads with one keep-alive connection each) sends
    ``--rest-jobs`` single-job ``POST /jobs`` from ``--clients`` threads."""
    o = run.o
    db = PgDatabases(o.pg_url, name=f"scal_{tag}_{uuid.uuid4().hex[:8]}")
    db.create()
    out: dict[str, Any] = {"kind": "rest", "processes": apis, "client_threads": o.clients}
    pg = None
    try:
        service = run.service(db.url())  # migrates the schema before the API starts
        try:
            cluster = run.cluster(db.url(), tag)
            deadline = run.deadline()
            api = cluster.start_api("--processes", str(apis))
            if not cluster.wait_api(60):
                run.check(deadline, "API start", [api])
                raise Failed("the API did not answer /healthz within 60 s")
            settled = _settled(run, api.pid, apis, deadline, [api])
            out["api_tree_children"] = settled
            first_id = newest_id(service.store) + 1
            pg = PgCpuKept(o.pg_url, db.name)
            spec = {"url": cluster.api_url, "jobs": o.rest_jobs, "batch": 0,
                    "clients": o.clients, "deadline_s": o.timeout}
            client_env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_")}
            client = cluster.launch("rest-client", [sys.executable, "-m",
                                                    "jobq.bench.rest_client", json.dumps(spec)],
                                    client_env)
            sampler = Sampler(pg, [api.pid], [client.pid])
            before = db_counters(o.pg_url, db.name)
            sampler.sample()
            while client.alive():
                run.check(deadline + 30, "REST client", [api])
                sampler.sample()
                time.sleep(o.sample_interval)
            sampler.sample()
            run.check(deadline, "REST enqueue", [api])
            log = (cluster.log_dir / "rest-client.log").read_text(errors="replace")
            try:
                res = json.loads(log.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise Failed(f"the REST client failed: {log[-600:]}") from None
            if res.get("errors") or res.get("timed_out"):
                raise Failed(f"REST: {res['errors']} failed requests {res['statuses']} "
                             f"{res['error_samples']}; timed out: {res['timed_out']}")
            created = [j.created_at.timestamp()
                       for j in jobs_since(service.store, first_id, JobState.PENDING)]
        finally:
            for c in list(run.clusters):
                run.stop(c)
            service.close()
        after = counters_after(o.pg_url, db.name, deadline)
    finally:
        if pg is not None:
            pg.close()
        db.drop()
    n = len(created)
    if n != o.rest_jobs:
        raise Failed(f"REST: {n} of {o.rest_jobs} jobs in the database")
    t0, t1, k = middle(created)
    d = delta(after, before)
    out.update({
        "jobs": n,
        # The jobs' created_at (their transaction's start: one group commit, one time).
        "steady_jobs_per_s": round(k / (t1 - t0), 1) if t1 > t0 else None,
        "client_jobs_per_s": res["jobs_per_s"], "client_seconds": res["seconds"],
        "request_p50_ms": res["request_p50_ms"], "request_p99_ms": res["request_p99_ms"],
        "distinct_created_at": len(set(created)),
        "xacts_per_job": round((d["xact_commit"] + d["xact_rollback"]) / n, 3),
        **sampler.shares(t0, t1, k),
    })
    return out


def counters_after(admin_url: str, database: str, deadline: float) -> dict[str, int]:
    """pg_stat_database of ``database`` once its sessions have ended: a backend passes its
    counters on at most once a second while it runs, and always when it exits."""
    def gone() -> bool:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as c:
            return not c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                 (database,)).fetchone()[0]

    wait_until(gone, min(10.0, max(deadline - time.monotonic(), 1.0)), 0.05)
    return db_counters(admin_url, database)


def _settled(run: Run, pid: int, apis: int, deadline: float, procs: list[Any]) -> int:
    """Wait until the API's process tree has its A serving processes and their start-up is
    over (the tree's CPU grows by less than 5 % of a core over 0.3 s); how many it has."""
    from cpu import _children

    def serving() -> int:
        kids = _children().get(pid, [])
        return len(kids) if apis > 1 else 1

    last = tree_cpu([pid])
    while True:
        time.sleep(0.3)
        run.check(deadline, "API start-up", procs)
        now = tree_cpu([pid])
        if serving() >= apis and now - last < 0.05 * 0.3:
            return serving()
        last = now


# -- the run -------------------------------------------------------------------------------


def machine(pg_url: str) -> dict[str, Any]:
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as c:
        show = {k: c.execute(f"SHOW {k}").fetchone()[0]
                for k in ("server_version", "fsync", "synchronous_commit", "max_connections",
                          "shared_buffers")}
    return {"cores": CORES, "platform": platform.platform(),
            "python": platform.python_version(), "postgresql": show}


def ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: positive integers")
    return sorted(set(out))


def options(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs per drain [100000]")
    ap.add_argument("--rest-jobs", type=int, default=20_000,
                    help="single-job POST /jobs per REST point [20000]")
    ap.add_argument("--workers", type=ints, default=[1, 2, 4, 8],
                    help="worker processes of the drain points [1,2,4,8]")
    ap.add_argument("--apis", type=ints, default=[1, 2, 4],
                    help="API processes (jobq api --processes) of the REST points [1,2,4]")
    ap.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                    help=f"jobq worker --concurrency [jobq's default, {DEFAULT_CONCURRENCY}]")
    ap.add_argument("--clients", type=int, default=64,
                    help="threads of the REST client process [64]")
    ap.add_argument("--start", choices=["warm", "cold"], default="warm",
                    help="drain: workers up before the jobs are due (warm), or started on the "
                    "full queue (cold) [warm]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1, help="of the order of the points per round")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="admin database on 127.0.0.1 (throw-away databases are made there)")
    ap.add_argument("--timeout", type=float, default=300, help="per point, seconds [300]")
    ap.add_argument("--sample-interval", type=float, default=0.2,
                    help="CPU sampling period, seconds [0.2]")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file [benchmarks/results/scaling-<date>.json]")
    ap.add_argument("--markdown", action="store_true",
                    help="also print the tables as Markdown (for the README's Scaling section)")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="measure nothing: print the tables of an earlier run's JSON")
    o = ap.parse_args(argv)
    if "127.0.0.1" not in o.pg_url and "localhost" not in o.pg_url:
        ap.error("--pg-url must point at 127.0.0.1")
    if o.jobs < 10 or o.rest_jobs < 10 or o.rounds < 1:
        ap.error("--jobs and --rest-jobs need at least 10, --rounds at least 1")
    return o


def main(argv: list[str] | None = None) -> int:
    o = options(argv)
    if o.report:
        doc = json.loads(o.report.read_text())
        report(doc, o.markdown)
        return 0
    work = Path(tempfile.mkdtemp(prefix="jobq-scaling-"))
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    began = time.monotonic()
    doc: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit, "machine": machine(o.pg_url),
        "options": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(o).items()},
                    "pg_url": redact(o.pg_url)},
        "rounds": [],
    }
    out = o.out or HERE / "results" / f"scaling-{doc['date'][:19].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    points = [("drain", w) for w in o.workers] + [("rest", a) for a in o.apis]
    rng = random.Random(o.seed)
    run = Run(o, work)
    print(f"jobq scaling: {len(points)} points × {o.rounds} rounds; logs in {work}", flush=True)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C, even when started from a shell that had SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupted = False
    try:
        if o.start == "warm" and o.workers:
            run.calibrate()
            doc["fill_rate_calibrated"] = round(run.fill_rate)
        for r in range(o.rounds):
            order = points[:]
            rng.shuffle(order)
            rnd: dict[str, Any] = {"order": [f"{k}{n}" for k, n in order], "points": {}}
            doc["rounds"].append(rnd)
            for kind, n in order:
                tag = f"r{r + 1}-{kind}{n}"
                label = (f"drain, {n} worker process(es)" if kind == "drain"
                         else f"REST enqueue, {n} API process(es)")
                print(f"round {r + 1}/{o.rounds}: {label} …", end=" ", flush=True)
                t = time.monotonic()
                try:
                    res = (drain_point if kind == "drain" else rest_point)(run, n, tag)
                    print(f"{res.get('steady_jobs_per_s') or 0:,.0f} jobs/s, PostgreSQL "
                          f"{100 * res.get('pg_share', 0):.0f} % of {CORES} cores "
                          f"({time.monotonic() - t:.0f} s)", flush=True)
                except Failed as exc:
                    res = {"kind": kind, "processes": n, "error": str(exc)}
                    print(f"failed: {exc}", flush=True)
                except Exception as exc:  # noqa: BLE001 - one broken point must not end it
                    res = {"kind": kind, "processes": n,
                           "error": f"{type(exc).__name__}: {exc}"}
                    print(f"failed:\n{traceback.format_exc()}", flush=True)
                res["point_seconds"] = round(time.monotonic() - t, 1)
                rnd["points"][f"{kind}{n}"] = res
                out.write_text(json.dumps(doc, indent=2) + "\n")
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping what was started", flush=True)
    finally:
        run.stop_all()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    doc["interrupted"] = interrupted
    doc["run_seconds"] = round(time.monotonic() - began, 1)
    doc["summary"] = summarise(doc)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    report(doc, o.markdown)
    print(f"\nJSON: {out}")
    failed = any("error" in p for rnd in doc["rounds"] for p in rnd["points"].values())
    if interrupted or failed:
        print(f"process logs in {work}")
        return 130 if interrupted else 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


# -- the tables ----------------------------------------------------------------------------

#: (key in a point's result, label, percent of the 2 cores?)
FIELDS = [
    ("steady_jobs_per_s", "jobs/s", False),
    ("scaling", "× 1 process", False),
    ("pg_share", "PG backends", True),
    ("pg_server_share", "PG server", True),
    ("jobq_share", "jobq", True),
    ("client_share", "client", True),
    ("other_share", "other", True),
    ("idle_share", "idle", True),
    ("pg_cpu_ms_per_1k_jobs", "PG CPU-ms/1k jobs", False),
    ("jobq_cpu_ms_per_1k_jobs", "jobq CPU-ms/1k jobs", False),
    ("xacts_per_job", "xacts/job", False),
]


#: Fewer CPU samples than this inside a point's interval: its shares are rough (marked *).
ROUGH = 10


def _split(key: str) -> tuple[str, int]:
    """"drain4" -> ("drain", 4)."""
    kind = key.rstrip("0123456789")
    return kind, int(key[len(kind):])


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """Per point: median, min and max over the rounds of each figure, and of its throughput
    divided by the same round's 1-process (smallest) point."""
    out: dict[str, Any] = {}
    keys = {_split(k) for rnd in doc["rounds"] for k in rnd["points"]}
    for kind, n in sorted(keys):
        key = f"{kind}{n}"
        base = f"{kind}{min(m for k, m in keys if k == kind)}"
        series: dict[str, list[float]] = {}
        errors = []
        for rnd in doc["rounds"]:
            p = rnd["points"].get(key)
            if p is None:
                continue
            if "error" in p:
                errors.append(p["error"])
                continue
            b = rnd["points"].get(base, {})
            if p.get("steady_jobs_per_s") and b.get("steady_jobs_per_s"):
                series.setdefault("scaling", []).append(
                    p["steady_jobs_per_s"] / b["steady_jobs_per_s"])
            for f, _, _ in FIELDS:
                if isinstance(p.get(f), (int, float)):
                    series.setdefault(f, []).append(float(p[f]))
            for f in ("jobs_per_s", "ramp_s", "machine_total_share", "client_jobs_per_s",
                      "samples_in_interval",
                      "request_p50_ms", "request_p99_ms", "tuples_written_per_job"):
                if isinstance(p.get(f), (int, float)):
                    series.setdefault(f, []).append(float(p[f]))
        out[key] = {"kind": kind, "processes": n, "base": base, "errors": errors,
                    **{f: {"median": round(median(v), 4), "min": round(min(v), 4),
                           "max": round(max(v), 4), "values": [round(x, 4) for x in v]}
                       for f, v in series.items()}}
    return out


def _cell(s: dict[str, Any] | None, pct: bool, rounds: int) -> str:
    if not s:
        return "–"

    def f(x: float) -> str:
        if pct:
            return f"{round(100 * x) or 0:.0f}"  # no "-0"
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"

    body = f(s["median"])
    if rounds > 1:
        body += f" ({f(s['min'])}–{f(s['max'])})"
    return body + (" %" if pct else "")


def tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    o = doc["options"]
    summary = summarise(doc)
    rounds = len(doc["rounds"])
    out = []
    for kind, title, what in (
        ("drain", f"drain of {o['jobs']:,} no-op jobs, W × `jobq worker --concurrency "
                  f"{o['concurrency']}` ({o.get('start', 'warm')} start)", "workers"),
        ("rest", f"REST enqueue, {o['rest_jobs']:,} × single-job `POST /jobs` from "
                 f"{o['clients']} client threads, `jobq api --processes A`", "API processes"),
    ):
        rows = []
        for key, s in summary.items():
            if s["kind"] != kind:
                continue
            row = [str(s["processes"])] + [_cell(s.get(f), pct, rounds) for f, _, pct in FIELDS]
            if s.get("samples_in_interval", {}).get("min", ROUGH) < ROUGH:
                row[0] += " *"
            if s["errors"]:
                row[1] += f" ({len(s['errors'])} failed)"
            rows.append(row)
        if rows:
            out.append((title, [what] + [lbl for _, lbl, _ in FIELDS], rows))
    return out


def report(doc: dict[str, Any], markdown: bool) -> None:
    m = doc["machine"]
    pg = m["postgresql"]
    rounds = len(doc["rounds"])
    head = (f"jobq scaling — {doc['date']}, commit {doc['commit'][:12]}; {m['cores']} cores, "
            f"PostgreSQL {pg['server_version']} (fsync {pg['fsync']}, synchronous_commit "
            f"{pg['synchronous_commit']}); {rounds} interleaved round(s)"
            + ("; median (min–max) over the rounds" if rounds > 1 else ""))
    note = ("CPU as % of all cores × the interval of the middle 80 % of the jobs: PG backends "
            "= the backends of the point's database; PG server = the server's own processes "
            "(WAL writer, checkpointer, …, shared with the server's other databases); jobq = "
            "the worker or API processes; client = the REST client process and this harness; "
            "other = the rest of the machine's busy time (/proc/stat); idle = idle + iowait.")
    print("\n" + head)
    print(note)
    for title, header, rows in tables(doc):
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(f"\n{title}")
        print("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths)))
        for r in rows:
            print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
    rough = ("* fewer than {ROUGH} CPU samples ({every} s apart) in the interval of the middle "
             "80 % of the jobs: the shares are rough; more --jobs / --rest-jobs")
    rough = rough.format(ROUGH=ROUGH, every=doc["options"].get("sample_interval"))
    if any(r[0].endswith("*") for _, _, rows in tables(doc) for r in rows):
        print(rough)
    for rnd_no, rnd in enumerate(doc["rounds"], 1):
        for key, p in rnd["points"].items():
            if "error" in p:
                print(f"  ! round {rnd_no} {key}: {p['error']}")
    if markdown:
        print("\n<!-- benchmarks/scaling.py, " + head + " -->")
        for title, header, rows in tables(doc):
            print(f"\n{title[0].upper()}{title[1:]}:\n")
            print("| " + " | ".join(header) + " |")
            print("|" + "|".join(" ---: " for _ in header) + "|")
            for r in rows:
                print("| " + " | ".join(r) + " |")
        print(f"\n{note}")


if __name__ == "__main__":
    raise SystemExit(main())
