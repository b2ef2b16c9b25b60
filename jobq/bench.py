"""`jobq bench`: the project's own benchmark, on SQLite and on PostgreSQL.

What it measures, per database (each in throw-away databases: a temp-dir file for SQLite, a
database it creates and drops for PostgreSQL):

- enqueue: one job per call from the Python client (in-process ``JobService.enqueue``); one
  job per REST request from concurrent clients against a real ``python -m jobq api`` process;
  batches through ``JobService.enqueue_many``; batches through ``POST /jobs/batch``. The REST
  clients are threads of a separate process (``python -m jobq.bench --rest-client``), so the
  client does not share the benchmark process's interpreter.
- drain: N no-op jobs queued first (untimed), then W ``python -m jobq worker`` processes with
  concurrency C each; jobs/s from the first claim to the last completion, and over the middle
  80 % of completions, both from the database's own timestamps (``started_at``,
  ``finished_at``), never from polling.
- pickup latency: idle workers; jobs enqueued one by one about 20 ms apart; from the moment
  the enqueue call returned in the client to the moment the handler started in the worker.
- growth: the drain again with 100k and 1M finished jobs already in the table, and a drain of
  a larger queue.
- peak memory (VmHWM) of the API and of each worker process.

Every phase has a timeout; every process it starts is stopped by its PID at the end (also on
Ctrl-C or an error); only 127.0.0.1 is used.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jobq.chaos.harness import Cluster, Databases, Proc, wait_until

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TASKS_MODULE = "jobq.bench_tasks"
NOOP, STAMP = "bench_noop", "bench_stamp"
PHASES = ("enqueue", "drain", "pickup", "growth")
#: Worker concurrency when --concurrency is not given (see README, "Performance").
DEFAULT_CONCURRENCY = 64
#: Settings the bench sets itself; every other JOBQ_* variable reaches the processes it starts.
_OWN_SETTINGS = {"DATABASE_URL", "TASKS", "HOST", "PORT", "PROCESSES", "CONCURRENCY",
                 "QUEUES", "LOG_LEVEL", "AUTO_MIGRATE"}


class PhaseError(Exception):
    """A phase that could not be measured (timed out, a process died); the others go on."""


@dataclass
class Options:
    dbs: list[str]
    pg_url: str = DEFAULT_PG_URL
    json_out: Path = Path("bench-results.json")
    jobs: int = 20_000  # drain size
    workers: int = 2
    concurrency: list[int] = field(default_factory=lambda: [DEFAULT_CONCURRENCY])
    enqueue_jobs: int = 5_000  # single-job enqueues; batched ones enqueue 10x as many
    batch_sizes: list[int] = field(default_factory=lambda: [100, 1000])
    #: API processes behind the port for the REST figures (`jobq api --processes N`).
    api_processes: list[int] = field(default_factory=lambda: [1, 2])
    clients: int = 32
    pickup_samples: int = 200
    pickup_gap_ms: float = 20.0
    growth_finished: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    growth_queued: int = 100_000
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    phase_timeout: float = 900.0
    quick: bool = False

    @classmethod
    def quick_preset(cls, **kw: Any) -> Options:
        base = dict(jobs=500, enqueue_jobs=200, batch_sizes=[50], clients=32, pickup_samples=25,
                    growth_finished=[5_000, 20_000], growth_queued=2_000, phase_timeout=60.0,
                    quick=True)
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


# -- helpers ---------------------------------------------------------------------------------


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size of a live process (VmHWM), in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def api_tree_peak_rss_kb(pid: int) -> int | None:
    """The largest VmHWM among the API process and its children: with ``--processes N`` the
    process started is uvicorn's supervisor and the children serve."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    peaks = [kb for kb in map(vm_hwm_kb, pids) if kb]
    return max(peaks) if peaks else None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rates(started: list[float], finished: list[float]) -> dict[str, float | None]:
    """Throughput from the database's timestamps: first claim to last completion, and over the
    middle 80 % of completions (the steady state, without the ramp-up and the tail)."""
    n = len(finished)
    if n == 0:
        return {"seconds": None, "jobs_per_s": None, "steady_jobs_per_s": None}
    f = sorted(finished)
    span = f[-1] - min(started)
    lo, hi = int(n * 0.1), max(int(n * 0.9) - 1, 0)
    steady = (hi - lo) / (f[hi] - f[lo]) if hi > lo and f[hi] > f[lo] else None
    return {
        "seconds": round(span, 3),
        "jobs_per_s": round(n / span, 1) if span > 0 else None,
        "steady_jobs_per_s": round(steady, 1) if steady else None,
    }


def _bench_env(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBQ_") or k[5:] not in _OWN_SETTINGS}
    env.update({
        "JOBQ_DATABASE_URL": db_url,
        "JOBQ_TASKS": TASKS_MODULE,
        "JOBQ_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    })
    return env


class BenchProcs(Cluster):
    """The chaos harness's Cluster (real processes, own sessions, stopped by PID), with the
    user's settings instead of the chaos campaigns' short leases."""

    def __init__(self, run_dir: Path, db_url: str) -> None:
        super().__init__(run_dir, db_url, ledger_url="")
        self.env = _bench_env(db_url)


# -- databases -------------------------------------------------------------------------------


class Backend:
    """Makes throw-away databases of one kind and drops them at the end."""

    def __init__(self, kind: str, pg_url: str, work_dir: Path) -> None:
        self.kind = kind
        self.pg_url = pg_url
        self.work_dir = work_dir
        self._pg: list[Databases] = []
        self._files: list[str] = []

    def check(self) -> None:
        if self.kind == "postgresql":
            import psycopg

            try:
                with psycopg.connect(self.pg_url, connect_timeout=5):
                    pass
            except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
                raise PhaseError(f"PostgreSQL at {self.pg_url} is unreachable: {exc}") from None

    def new_url(self, label: str) -> str:
        if self.kind == "sqlite":
            path = self.work_dir / f"{label}-{uuid.uuid4().hex[:6]}.db"
            self._files.append(f"sqlite:///{path}")
            return self._files[-1]
        db = Databases(self.pg_url, name=f"jobq_bench_{uuid.uuid4().hex[:10]}", ledger=False)
        self._pg.append(db)
        db.create()
        return db.jobq_url

    def drop(self, url: str) -> None:
        if self.kind == "sqlite":
            path = Path(url.removeprefix("sqlite:///"))
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
            return
        for db in [d for d in self._pg if d.jobq_url == url]:
            db.drop()
            self._pg.remove(db)

    def drop_all(self) -> None:
        for url in self._files:
            self.drop(url)
        self._files.clear()
        for db in list(self._pg):
            db.drop()
        self._pg.clear()


# -- the REST load generator (a separate process) --------------------------------------------


def run_rest_client(api_url: str, jobs: int, batch: int, clients: int, timeout: float) -> dict:
    """Start the REST client process and return what it measured."""
    spec = {"url": api_url, "jobs": jobs, "batch": batch, "clients": clients,
            "deadline_s": timeout}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobq.bench", "--rest-client", json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        raise PhaseError(f"the REST client did not finish within {timeout + 30:.0f}s") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PhaseError(f"the REST client failed (exit {proc.returncode}): "
                         f"{(err or out)[-600:]}") from None


def _rest_client_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Threads, each with one keep-alive connection, submitting until ``jobs`` are taken."""
    from urllib.parse import urlsplit

    url = urlsplit(spec["url"])
    total, batch, clients = int(spec["jobs"]), int(spec["batch"]), int(spec["clients"])
    deadline = time.monotonic() + float(spec["deadline_s"])
    path = "/jobs/batch" if batch else "/jobs"
    step = batch or 1
    lock = threading.Lock()
    state = {"next": 0, "accepted": 0, "requests": 0, "errors": 0}
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    headers = {"Content-Type": "application/json"}

    def take() -> tuple[int, int] | None:
        with lock:
            if state["next"] >= total or time.monotonic() > deadline:
                return None
            first = state["next"]
            state["next"] = min(first + step, total)
            return first, state["next"] - first

    def body(first: int, n: int) -> str:
        items = [{"task_type": NOOP, "payload": {"i": first + k}} for k in range(n)]
        return json.dumps({"jobs": items} if batch else items[0])

    def client() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            start.wait(60)
        except threading.BrokenBarrierError:
            return
        while (work := take()) is not None:
            payload = body(*work)
            began = time.perf_counter()
            try:
                conn.request("POST", path, payload, headers)
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
                with lock:
                    state["errors"] += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                continue
            took = time.perf_counter() - began
            with lock:
                state["requests"] += 1
                statuses[str(code)] = statuses.get(str(code), 0) + 1
                latencies.append(took)
                if code in (200, 201):
                    state["accepted"] += work[1]
                else:
                    state["errors"] += 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait(60)
    began = time.perf_counter()
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0) + 5)
    elapsed = time.perf_counter() - began
    return {
        "jobs": state["accepted"], "requests": state["requests"], "errors": state["errors"],
        "statuses": statuses, "seconds": round(elapsed, 3),
        "jobs_per_s": round(state["accepted"] / elapsed, 1) if elapsed > 0 else None,
        "request_p50_ms": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
        "request_p99_ms": round(percentile(latencies, 99) * 1000, 2) if latencies else None,
        "client_processes": 1, "client_threads": clients, "batch_size": batch or 1,
        "timed_out": time.monotonic() > deadline, "error_samples": errors,
    }


# -- the benchmark ---------------------------------------------------------------------------


class Bench:
    def __init__(self, opts: Options, progress: Any, work_dir: Path) -> None:
        from jobq.settings import load_settings

        self.opts = opts
        self.progress = progress
        self.work_dir = work_dir
        self.procs: list[BenchProcs] = []
        self.load_settings = load_settings

    # plumbing

    @contextmanager
    def step(self, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        task = self.progress.add_task(label, total=total)

        def advance(done: int) -> None:
            self.progress.update(task, completed=done)

        try:
            yield advance
        finally:
            self.progress.update(task, completed=total or 0, total=total or 0)
            self.progress.stop_task(task)

    def _service(self, url: str) -> Any:
        from jobq.service import JobService

        return JobService.from_settings(self.load_settings(database_url=url, tasks=TASKS_MODULE))

    @contextmanager
    def processes(self, url: str) -> Iterator[BenchProcs]:
        procs = BenchProcs(self.work_dir, url)
        self.procs.append(procs)
        try:
            yield procs
        finally:
            procs.stop()
            self.procs.remove(procs)

    def stop_all(self) -> None:
        for procs in list(self.procs):
            procs.stop()
        self.procs.clear()

    def deadline(self) -> float:
        return time.monotonic() + self.opts.phase_timeout

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise PhaseError(f"{what}: timed out after {self.opts.phase_timeout:.0f}s")

    @staticmethod
    def _alive(procs: list[Proc], what: str) -> None:
        dead = [p for p in procs if not p.alive()]
        if dead:
            codes = ", ".join(f"{p.name} exit {p.popen.returncode}" for p in dead if p.popen)
            raise PhaseError(f"{what}: process(es) died ({codes}); logs in {dead[0].name}.log")

    def fill(self, service: Any, n: int, task_type: str = NOOP) -> None:
        """Queue ``n`` jobs as fast as the client allows (untimed)."""
        deadline = self.deadline()
        for first in range(0, n, 1000):
            self._check_deadline(deadline, "queueing jobs")
            enqueue_batch(service, [{"i": i} for i in range(first, min(first + 1000, n))],
                          task_type)

    # phases

    def enqueue_phase(self, backend: Backend, tag: str) -> dict[str, Any]:
        """The four enqueue figures, against one database with the API running. A figure
        that fails is recorded as {"error": ...} and the others are still measured."""
        o = self.opts
        url = backend.new_url("enqueue")
        out: dict[str, Any] = {}
        failures: list[str] = []

        def figure(into: Any, key: str | None, label: str, total: int | None,
                   fn: Callable[[Callable[[int], None]], dict[str, Any]]) -> None:
            """Measure one figure into ``into[key]`` (or append it to the list ``into``)."""
            try:
                with self.step(f"{tag}: enqueue, {label}", total) as adv:
                    result = fn(adv)
                if result.get("errors") or result.get("timed_out"):
                    raise PhaseError(
                        f"{result['errors']} failed requests {result['statuses']} "
                        f"{result['error_samples']}; timed out: {result['timed_out']}")
            except PhaseError as exc:
                result = {"error": str(exc)}
                failures.append(f"{label}: {exc}")
            if key is None:
                into.append(result)
            else:
                into[key] = result

        service = self._service(url)
        n, c = o.enqueue_jobs, o.clients
        out["python_batch"], out["rest"] = [], []
        try:
            figure(out, "python_single", "Python client, 1 job per call", n,
                   lambda adv: self._timed_enqueue(service, n, 1, adv))
            for b in o.batch_sizes:
                nb = max(10 * n, 20 * b)
                figure(out["python_batch"], None, f"Python client, batches of {b}", nb,
                       lambda adv, nb=nb, b=b: self._timed_enqueue(service, nb, b, adv))
            for k in o.api_processes:
                rest: dict[str, Any] = {"api_processes": k, "batch": []}
                out["rest"].append(rest)
                with self.processes(url) as procs:
                    api = procs.start_api("--processes", str(k))
                    with self.step(f"{tag}: starting the API ({k} process(es))", None):
                        if not procs.wait_api(60):
                            self._alive([api], "API start")
                            raise PhaseError("the API did not answer /healthz within 60s")
                    figure(rest, "single", f"REST, 1 job per request, {c} clients, {k} API "
                           "process(es)", None,
                           lambda adv: run_rest_client(procs.api_url, n, 0, c, o.phase_timeout))
                    for b in o.batch_sizes:
                        nb = max(10 * n, 4 * c * b)  # several requests per client thread
                        figure(rest["batch"], None,
                               f"REST, batches of {b}, {c} clients, {k} API process(es)", None,
                               lambda adv, nb=nb, b=b: run_rest_client(
                                   procs.api_url, nb, b, c, o.phase_timeout))
                    self._alive([api], "enqueue over REST")
                    rss = api_tree_peak_rss_kb(api.pid)
                    rest["api_peak_rss_kb"] = rss
                    if k == 1:
                        out["api_peak_rss_kb"] = rss
        finally:
            service.close()
            backend.drop(url)
        if failures:
            out["errors"] = failures
        return out

    def _timed_enqueue(self, service: Any, n: int, batch: int,
                       advance: Callable[[int], None]) -> dict[str, Any]:
        deadline = self.deadline()
        began = time.perf_counter()
        done = 0
        while done < n:
            self._check_deadline(deadline, "enqueue")
            if batch == 1:
                service.enqueue(NOOP, {"i": done})
                done += 1
            else:
                k = min(batch, n - done)
                enqueue_batch(service, [{"i": done + j} for j in range(k)], NOOP)
                done += k
            if done % 100 < batch:
                advance(done)
        elapsed = time.perf_counter() - began
        return {"jobs": n, "seconds": round(elapsed, 3), "jobs_per_s": round(n / elapsed, 1),
                "batch_size": batch, "client": "in-process JobService, one thread"}

    def drain(self, url: str, service: Any, n: int, concurrency: int, tag: str,
              finished_before: int) -> dict[str, Any]:
        """Queue ``n`` no-op jobs, start the workers, wait for the queue to empty; rates from
        the jobs' own timestamps."""
        o = self.opts
        label = f"{tag}: drain {n:,} jobs, {o.workers}×{concurrency}"
        if finished_before:
            label += f", {finished_before:,} finished in the table"
        store = service.store
        with self.step(f"{label} (queueing, untimed)", None):
            first_id = newest_id(store) + 1
            self.fill(service, n)
        deadline = self.deadline()
        with self.processes(url) as procs, self.step(label, n) as advance:
            workers = [procs.start_worker(i, "--concurrency", str(concurrency))
                       for i in range(o.workers)]
            while True:
                self._check_deadline(deadline, label)
                self._alive(workers, label)
                if queue_empty(store):
                    break
                advance(min(max(newest_done_id(store) - first_id + 1, 0), n))
                time.sleep(0.25)
            peaks = [vm_hwm_kb(w.pid) for w in workers]
        started, finished = finished_times(store, first_id)
        result = {"jobs": n, "done": len(finished), "workers": o.workers,
                  "concurrency": concurrency, "finished_before": finished_before,
                  **rates(started, finished), "worker_peak_rss_kb": peaks}
        if len(finished) != n:
            raise PhaseError(f"{label}: only {len(finished)} of {n} jobs ended done")
        return result

    def drain_phase(self, backend: Backend, tag: str, growth: bool, drain: bool
                    ) -> dict[str, Any]:
        """The drain at each concurrency, and the growth series on the first one's database:
        the same drain with more finished jobs in the table, then a larger queue."""
        o = self.opts
        out: dict[str, Any] = {}
        runs: list[dict[str, Any]] = []
        finished_series: list[dict[str, Any]] = []
        c0 = o.concurrency[0]
        for idx, c in enumerate(o.concurrency if drain else [c0]):
            url = backend.new_url(f"drain-c{c}")
            service = self._service(url)
            try:
                base = self.drain(url, service, o.jobs, c, tag, 0)
                runs.append(base)
                if growth and idx == 0:
                    finished_series.append(base)
                    have = o.jobs
                    for level in o.growth_finished:
                        if level > have:
                            with self.step(f"{tag}: backfill to {level:,} finished jobs",
                                           None):
                                began = time.perf_counter()
                                service.store.backfill_finished(level - have)
                                took = time.perf_counter() - began
                            have = level
                        else:
                            took = 0.0
                        run = self.drain(url, service, o.jobs, c, tag, have)
                        run["backfill_seconds"] = round(took, 2)
                        finished_series.append(run)
                        have += o.jobs
            finally:
                service.close()
                backend.drop(url)
        if drain:
            out["drain"] = runs
        if growth:
            url = backend.new_url("drain-big")
            service = self._service(url)
            try:
                big = self.drain(url, service, o.growth_queued, c0, tag, 0)
            finally:
                service.close()
                backend.drop(url)
            out["growth"] = {"finished": finished_series, "queued": [runs[0], big]}
        return out

    def pickup_phase(self, backend: Backend, tag: str) -> dict[str, Any]:
        o = self.opts
        c = o.concurrency[0]
        url = backend.new_url("pickup")
        service = self._service(url)
        store = service.store
        settings = service.settings
        samples: list[tuple[int, float]] = []
        try:
            with self.processes(url) as procs:
                workers = [procs.start_worker(i, "--concurrency", str(c))
                           for i in range(o.workers)]
                with self.step(f"{tag}: pickup latency: starting {o.workers} workers", None):
                    if not wait_until(lambda: len(store.stats(
                            live_worker_seconds=2 * settings.lease_seconds).workers) >= o.workers,
                            60, 0.2):
                        self._alive(workers, "pickup")
                        raise PhaseError("pickup: the workers did not register within 60s")
                    time.sleep(1.5)  # idle: past their first empty claim, waiting
                deadline = self.deadline()
                gap = o.pickup_gap_ms / 1000
                with self.step(f"{tag}: pickup latency, {o.pickup_samples} jobs "
                               f"{o.pickup_gap_ms:.0f} ms apart", o.pickup_samples) as adv:
                    nxt = time.monotonic()
                    for k in range(o.pickup_samples):
                        self._check_deadline(deadline, "pickup")
                        result = service.enqueue(STAMP, {"k": k})
                        samples.append((result.job.id, time.time()))
                        adv(k + 1)
                        nxt += gap
                        time.sleep(max(nxt - time.monotonic(), 0))
                    while not queue_empty(store):
                        self._check_deadline(deadline, "pickup")
                        self._alive(workers, "pickup")
                        time.sleep(0.1)
            latencies = []
            for job_id, enqueued in samples:
                job = store.get(job_id, with_attempts=False)
                if not isinstance(job.result, (int, float)):
                    raise PhaseError(f"pickup: job {job_id} ended {job.state} without a stamp")
                latencies.append((job.result - enqueued) * 1000)
        finally:
            service.close()
            backend.drop(url)
        return {
            "samples": len(latencies), "gap_ms": o.pickup_gap_ms, "workers": o.workers,
            "concurrency": c,
            "poll_interval_seconds": settings.poll_interval_seconds,
            "p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "max_ms": round(max(latencies), 2),
            "min_ms": round(min(latencies), 2),
        }

    def run_backend(self, kind: str, res: dict[str, Any]) -> None:
        """Every phase on one kind of database; figures go into ``res`` as they come, so an
        interrupted run still reports what it measured."""
        o = self.opts
        backend = Backend(kind, o.pg_url, self.work_dir)
        res["errors"] = []

        def phase(name: str, fn: Callable[[], dict[str, Any]]) -> None:
            try:
                res.update(fn())
            except PhaseError as exc:
                res["errors"].append(f"{name}: {exc}")
                self.progress.console.print(f"[red]{kind} {name}: {exc}[/red]")
            except Exception as exc:  # noqa: BLE001 - one broken phase must not hide the rest
                res["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
                self.progress.console.print(f"[red]{kind} {name}: {traceback.format_exc()}"
                                            "[/red]")

        try:
            backend.check()
            url = backend.new_url("settings")
            service = self._service(url)
            try:
                res["settings"] = service.store.server_settings()
            finally:
                service.close()
                backend.drop(url)
            if "enqueue" in o.phases:
                phase("enqueue", lambda: {"enqueue": self.enqueue_phase(backend, kind)})
                for err in res.get("enqueue", {}).get("errors", []):
                    res["errors"].append(f"enqueue {err}")
            if "drain" in o.phases or "growth" in o.phases:
                phase("drain", lambda: self.drain_phase(
                    backend, kind, growth="growth" in o.phases, drain="drain" in o.phases))
            if "pickup" in o.phases:
                phase("pickup", lambda: {"pickup": self.pickup_phase(backend, kind)})
        except PhaseError as exc:
            res["errors"].append(str(exc))
            self.progress.console.print(f"[red]{kind}: {exc}[/red]")
        finally:
            self.stop_all()
            backend.drop_all()
            res["memory"] = memory_summary(res)


def enqueue_batch(service: Any, payloads: list[Any], task_type: str) -> None:
    """One batch through the Python client's ``enqueue_many`` (one transaction)."""
    service.enqueue_many([{"task_type": task_type, "payload": p} for p in payloads])


def memory_summary(res: dict[str, Any]) -> dict[str, Any]:
    growth = res.get("growth", {})
    runs = [*res.get("drain", []), *growth.get("finished", []), *growth.get("queued", [])]
    workers = [kb for run in runs for kb in run.get("worker_peak_rss_kb", []) if kb]
    return {
        "api_peak_rss_kb": res.get("enqueue", {}).get("api_peak_rss_kb"),
        "worker_peak_rss_kb": workers,
        "worker_peak_rss_kb_max": max(workers) if workers else None,
    }


# -- reads through the store's public methods ------------------------------------------------


def newest_id(store: Any) -> int:
    page = store.list_jobs(limit=1)
    return page.items[0].id if page.items else 0


def newest_done_id(store: Any) -> int:
    from jobq.types import JobState

    page = store.list_jobs(state=JobState.DONE, limit=1)
    return page.items[0].id if page.items else 0


def queue_empty(store: Any) -> bool:
    """No job pending or running: two index lookups, cheap with millions of finished rows."""
    from jobq.types import JobState

    return not (store.list_jobs(state=JobState.PENDING, limit=1).items
                or store.list_jobs(state=JobState.RUNNING, limit=1).items)


def finished_times(store: Any, first_id: int) -> tuple[list[float], list[float]]:
    """started_at and finished_at (Unix seconds, the database's clock) of the done jobs with
    ids from ``first_id`` on, paged newest first."""
    from jobq.types import JobState

    started: list[float] = []
    finished: list[float] = []
    cursor = None
    while True:
        page = store.list_jobs(state=JobState.DONE, limit=5000, cursor=cursor)
        for job in page.items:
            if job.id < first_id:
                return started, finished
            started.append(job.started_at.timestamp())
            finished.append(job.finished_at.timestamp())
        if page.next_cursor is None:
            return started, finished
        cursor = page.next_cursor


# -- entry point -----------------------------------------------------------------------------


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def run(opts: Options) -> int:
    """Run the benchmark; print the table; write the JSON. Returns the exit code."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from jobq.settings import load_settings

    # Not a terminal (a log, CI): wide enough that the table's rows stay on one line.
    console = Console() if sys.stdout.isatty() else Console(width=130)
    cores = os.cpu_count()
    worker_settings = load_settings().model_dump(
        exclude={"database_url", "tasks", "host", "port", "processes", "concurrency",
                 "queues", "log_level", "auto_migrate"})
    doc: dict[str, Any] = {
        "version": 1,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": cores, "platform": platform.platform(),
                    "python": platform.python_version()},
        "options": {**{k: (str(v) if isinstance(v, Path) else v)
                       for k, v in asdict(opts).items()}, "pg_url": _redact(opts.pg_url)},
        "process_settings": worker_settings,
        "databases": {},
    }
    console.print(f"jobq bench{' --quick' if opts.quick else ''}: {', '.join(opts.dbs)}; "
                  f"{cores} cores (os.cpu_count()); phases {', '.join(opts.phases)}")
    work_dir = Path(tempfile.mkdtemp(prefix="jobq-bench-"))
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    interrupted = False
    failed = False
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
            bench = Bench(opts, progress, work_dir)
            try:
                for kind in opts.dbs:
                    began = time.monotonic()
                    res: dict[str, Any] = doc["databases"].setdefault(kind, {})
                    try:
                        bench.run_backend(kind, res)
                    finally:
                        res["bench_seconds"] = round(time.monotonic() - began, 1)
                    failed |= bool(res["errors"])
            except KeyboardInterrupt:
                interrupted = True
            finally:
                bench.stop_all()
    finally:
        signal.signal(signal.SIGTERM, previous)
    doc["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc["interrupted"] = interrupted
    opts.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    print_report(console, doc)
    console.print(f"results written to {opts.json_out}")
    if failed or interrupted:
        console.print(f"[red]{'interrupted' if interrupted else 'some phases failed'}; "
                      f"process logs in {work_dir}[/red]")
        return 130 if interrupted else 1
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rest-client":
        print(json.dumps(_rest_client_main(json.loads(sys.argv[2]))), flush=True)
    else:
        sys.exit("usage: jobq bench (this module's own entry point is for its REST client)")
