"""The fault campaigns and the checker that turns each run into one line per invariant.

Each campaign gets fresh databases, starts real processes, applies its faults, drains, and
returns its checks. Figures are printed by ``runner.py``.
"""

from __future__ import annotations

import random
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from jobq.chaos.cluster import Databases, chaos_cluster
from jobq.chaos.load import LoadGen
from jobq.chaos.proxy import BlackholeProxy
from jobq.harness import Cluster, Proc, server_address, wait_until, with_server
from jobq.settings import load_settings
from jobq.store import SqlStore, open_store
from jobq.types import AttemptOutcome, Job, JobState

LEASE, RESCUE = 3.0, 1.0
RECOVERY_BOUND = LEASE + RESCUE + 1.0


@dataclass
class Check:
    name: str
    figure: str
    ok: bool


@dataclass
class Ctx:
    """What every campaign gets: where PostgreSQL is, where to write logs, how big to go."""

    admin_url: str
    out_dir: Path
    reduced: bool
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def scale(self, full: int, reduced: int) -> int:
        return reduced if self.reduced else full


# -- reading the outcome ---------------------------------------------------------------------


@dataclass
class Execution:
    job_id: int
    attempt: int
    pid: int
    task: str
    started: float
    ended: float | None
    outcome: str | None
    overlapped: bool


def read_ledger(ledger_url: str) -> list[Execution]:
    with psycopg.connect(ledger_url) as conn:
        rows = conn.execute(
            "SELECT job_id, attempt, pid, task, extract(epoch FROM started_at), "
            "extract(epoch FROM ended_at), outcome, overlapped FROM chaos_ledger ORDER BY id"
        ).fetchall()
    return [Execution(r[0], r[1], r[2], r[3], float(r[4]), None if r[5] is None else float(r[5]),
                      r[6], r[7]) for r in rows]


def all_jobs(store: SqlStore) -> dict[int, Job]:
    jobs: dict[int, Job] = {}
    cursor = None
    while True:
        page = store.list_jobs(limit=500, cursor=cursor)
        jobs.update((j.id, j) for j in page.items)
        if page.next_cursor is None:
            return jobs
        cursor = page.next_cursor


def open_checker_store(db_url: str) -> SqlStore:
    return open_store(load_settings(database_url=db_url, db_pool_size=2, db_max_overflow=0),
                      auto_migrate=False)


def drain(store: SqlStore, timeout: float) -> bool:
    def done() -> bool:
        try:
            counts = store.stats(live_worker_seconds=60).jobs
        except Exception:  # noqa: BLE001 - the database may be coming back up
            return False
        return counts["pending"] == 0 and counts["running"] == 0

    return wait_until(done, timeout, 0.5)


class ConnectionWatch:
    """Samples pg_stat_activity for the campaign's database while it runs."""

    def __init__(self, admin_url: str, db_name: str, max_allowed: int) -> None:
        self.admin_url, self.db_name, self.max_allowed = admin_url, db_name, max_allowed
        self.peak = 0
        self.stale_idle_in_tx = 0  # idle in transaction for more than 5 s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def _sample(self) -> tuple[int, int]:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as c:
            row = c.execute(
                "SELECT count(*), count(*) FILTER (WHERE state = 'idle in transaction' "
                "AND state_change < clock_timestamp() - interval '5 seconds') "
                "FROM pg_stat_activity WHERE datname = %s", (self.db_name,)
            ).fetchone()
        return int(row[0]), int(row[1])

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                total, stale = self._sample()
            except psycopg.Error:
                continue
            self.peak = max(self.peak, total)
            self.stale_idle_in_tx = max(self.stale_idle_in_tx, stale)

    def stop(self) -> list[Check]:
        self._stop.set()
        self._thread.join(5)
        try:
            _total, now_idle = self._sample()
        except psycopg.Error:
            now_idle = -1
        ok = self.stale_idle_in_tx == 0 and now_idle == 0 and self.peak <= self.max_allowed
        return [Check("connections", f"peak {self.peak} (bound {self.max_allowed}), idle in "
                      f"transaction >5s: {self.stale_idle_in_tx}, at the end: {now_idle}", ok)]


def common_checks(store: SqlStore, ledger: list[Execution], load: LoadGen | None,
                  drained: bool, *, concurrency_expected: bool = False,
                  expect_failed: set[int] | None = None) -> list[Check]:
    jobs = all_jobs(store)
    checks: list[Check] = []
    if load is not None:
        accepted = load.accepted
        missing = [s for s in accepted if s.job_id not in jobs]
        unfinished = [s for s in accepted if s.job_id in jobs and not jobs[s.job_id].state.is_final]
        never = len(load.submissions) - len(accepted)
        checks.append(Check(
            "lost", f"{len(missing) + len(unfinished)} of {len(accepted)} accepted "
            f"({len(missing)} missing, {len(unfinished)} not final; {never} never acknowledged)",
            not missing and not unfinished and never == 0))
        keys = Counter(j.idempotency_key for j in jobs.values() if j.idempotency_key)
        dup_keys = sum(1 for n in keys.values() if n > 1)
        checks.append(Check("duplicates", f"{dup_keys + load.created_twice} (keys with two jobs: "
                            f"{dup_keys}; 201 after an earlier 2xx: {load.created_twice})",
                            dup_keys == 0 and load.created_twice == 0))
        checks.append(Check("server errors", f"{load.server_errors} 5xx/4xx errors, "
                            f"{load.good_503} 503 with Retry-After, {load.bad_503} without",
                            load.server_errors == 0))
    executions = Counter(e.job_id for e in ledger)
    violations = []
    for job in jobs.values():
        if not job.attempts <= job.max_attempts:
            violations.append(job.id)
    detailed = store_attempt_rows(store, executions)
    for job_id, (rows, n_exec) in detailed.items():
        if n_exec > rows:
            violations.append(job_id)
    checks.append(Check("attempts", f"{len(violations)} violations of executions <= attempts "
                        f"<= max_attempts over {len(jobs)} jobs", not violations))
    overlapped = sum(1 for e in ledger if e.overlapped)
    if not concurrency_expected:
        checks.append(Check("concurrent runs", f"{overlapped} overlapping executions",
                            overlapped == 0))
    stuck = sum(1 for j in jobs.values() if j.state is JobState.RUNNING)
    pending = sum(1 for j in jobs.values() if j.state is JobState.PENDING)
    checks.append(Check("stuck", f"{stuck} running, {pending} pending after the drain"
                        + ("" if drained else " (drain timed out)"), stuck == 0 and drained))
    failed = {j.id for j in jobs.values() if j.state is JobState.FAILED}
    if failed != (expect_failed or set()):
        checks.append(Check("unexpected failures", f"{len(failed - (expect_failed or set()))} "
                            f"jobs failed that should not have", False))
    return checks


def store_attempt_rows(store: SqlStore, executions: Counter[int]) -> dict[int, tuple[int, int]]:
    """(recorded attempts, ledger executions) for every job that executed more than once."""
    out = {}
    for job_id, n in executions.items():
        if n > 1:
            out[job_id] = (len(store.get(job_id).attempt_log), n)
    return out


# -- running one campaign --------------------------------------------------------------------


Campaign = Callable[[Ctx], list[Check]]


@dataclass
class Setup:
    ctx: Ctx
    name: str
    sqlite: bool = False
    dbs: Databases = field(init=False)
    cluster: Cluster = field(init=False)
    db_url: str = field(init=False)

    def __enter__(self) -> Setup:
        self.dbs = Databases(self.ctx.admin_url)
        self.dbs.create()
        run_dir = self.ctx.out_dir / self.name
        run_dir.mkdir(parents=True, exist_ok=True)
        self.db_url = (f"sqlite:///{run_dir / 'jobq.db'}" if self.sqlite else self.dbs.jobq_url)
        store = open_store(load_settings(database_url=self.db_url))  # migrate once, up front
        store.dispose()
        self.cluster = chaos_cluster(run_dir, self.db_url, self.dbs.ledger_url)
        return self

    def store(self) -> SqlStore:
        return open_checker_store(self.db_url)

    def __exit__(self, *exc: object) -> None:
        try:
            self.cluster.stop()
        finally:
            self.dbs.drop()


def work(ms: int) -> Callable[[int], dict[str, Any]]:
    return lambda i: {"task_type": "chaos.work", "payload": {"ms": ms}}


def start_workers(cluster: Cluster, n: int, concurrency: int = 8, **env: str) -> list[Proc]:
    return [cluster.start_worker(i, "--concurrency", str(concurrency), **env) for i in range(n)]


def finish(s: Setup, load: LoadGen | None, drain_s: float = 120, watch: ConnectionWatch | None
           = None, **kw: Any) -> list[Check]:
    if load is not None:
        load.join(300)
    store = s.store()
    try:
        drained = drain(store, drain_s)
        checks = common_checks(store, read_ledger(s.dbs.ledger_url), load, drained, **kw)
    finally:
        store.dispose()
    if watch is not None:
        checks += watch.stop()
    return checks


def pool_bound(processes: int) -> int:
    # Each process: pool 10 + overflow 10 (defaults), plus the checker's 2 and ledger slack.
    return processes * 20 + 4


# -- the campaigns ---------------------------------------------------------------------------


def baseline(ctx: Ctx) -> list[Check]:
    """2,000 jobs from 16 concurrent clients, 4 workers, no faults."""
    with Setup(ctx, "1-baseline") as s:
        s.cluster.start_api()
        start_workers(s.cluster, 4)
        assert s.cluster.wait_api(), "the API did not come up"
        watch = ConnectionWatch(ctx.admin_url, s.dbs.name, pool_bound(5)).start()
        load = LoadGen(s.cluster.api_url, 16, work(5), ctx.scale(2000, 600)).start()
        return finish(s, load, watch=watch)


def worker_kills(ctx: Ctx) -> list[Check]:
    """Workers killed with SIGKILL at random moments, then restarted."""
    kills = ctx.scale(10, 4)
    with Setup(ctx, "2-worker-kills") as s:
        s.cluster.start_api()
        workers = start_workers(s.cluster, 4, concurrency=4)
        assert s.cluster.wait_api()
        # Ten attempts: targeted kills can hit one job several times, and a job whose attempts
        # ran out is (rightly) failed rather than recovered.
        load = LoadGen(s.cluster.api_url, 16, lambda i: {**work(300)(i), "max_attempts": 10},
                       ctx.scale(1500, 500)).start()
        killed: list[tuple[int, float]] = []
        checker = s.store()
        try:
            for _ in range(kills):
                time.sleep(ctx.rng.uniform(0.5, 2.0))
                # A random moment, but a worker that is running jobs then: a kill that interrupts
                # nothing measures nothing.
                wait_until(lambda: busy_pids(s.dbs.ledger_url) & {w.pid for w in workers}, 20, 0.1)
                busy = busy_pids(s.dbs.ledger_url)
                victim = ctx.rng.choice([w for w in workers if w.pid in busy] or workers)
                pid = victim.pid
                victim.signal(signal.SIGKILL)
                killed.append((pid, time.time()))
                s.cluster.restart(victim)
                # The next kill comes once the restarted worker serves: the recovery bound is a
                # promise of the surviving workers, and on 2 busy cores a start can take seconds.
                wait_until(lambda: victim.pid in registered_pids(checker), 30, 0.1)
            checks = finish(s, load)
            checks.append(recovery_check(read_ledger(s.dbs.ledger_url), killed, checker))
            return checks
        finally:
            checker.dispose()


def registered_pids(store: SqlStore) -> set[int]:
    try:
        return {w.pid for w in store.stats(live_worker_seconds=60).workers}
    except Exception:  # noqa: BLE001 - a campaign's database may be restarting
        return set()


def busy_pids(ledger_url: str) -> set[int]:
    """Processes with an execution in progress, according to the ledger."""
    with psycopg.connect(ledger_url) as conn:
        rows = conn.execute("SELECT DISTINCT pid FROM chaos_ledger WHERE ended_at IS NULL")
        return {r[0] for r in rows}


def recovery_check(ledger: list[Execution], killed: list[tuple[int, float]],
                   store: SqlStore) -> Check:
    """From each SIGKILL to the next start of every job the victim was running.

    The figure splits the worst case in two: kill → rescue (the lost attempt's end, which the
    lease bounds) and rescue → next start (which the claim loop bounds).
    """
    by_job: dict[int, list[Execution]] = defaultdict(list)
    for e in ledger:
        by_job[e.job_id].append(e)
    delays: list[tuple[float, int, float]] = []
    for pid, at in killed:
        for e in ledger:
            if e.pid == pid and e.ended is None and e.started <= at:
                later = [x.started for x in by_job[e.job_id] if x.started > at]
                delays.append((min(later) - at if later else float("inf"), e.job_id, at))
    if not delays:
        return Check("recovery", "no kill interrupted a job", False)
    worst, job_id, at = max(delays)
    rescued = [a.finished_at.timestamp() for a in store.get(job_id).attempt_log
               if a.outcome is AttemptOutcome.LOST and a.finished_at is not None
               and a.finished_at.timestamp() >= at]
    split = (f"; worst: job {job_id} rescued after {min(rescued) - at:.2f}s, started "
             f"{worst - (min(rescued) - at):.2f}s later" if rescued else "")
    return Check("recovery", f"max {worst:.2f}s over {len(delays)} interrupted jobs "
                 f"(bound {RECOVERY_BOUND:.1f}s){split}", worst <= RECOVERY_BOUND)


def _pg_cluster() -> tuple[str, str] | None:
    if shutil.which("pg_ctlcluster") is None:
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*"))
    return (versions[-1], "main") if versions else None


def _pg_ctl(action: str, *extra: str) -> None:
    cluster = _pg_cluster()
    assert cluster is not None
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", cluster[0], cluster[1],
                    action, *extra], check=True, capture_output=True, timeout=120)


def _pg_ready(admin_url: str) -> bool:
    try:
        with psycopg.connect(admin_url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def database_faults(ctx: Ctx) -> list[Check]:
    """PostgreSQL restarted (fast), crashed (immediate stop, start), its backends terminated."""
    host = server_address(ctx.admin_url)[0] or "localhost"
    if _pg_cluster() is None or host not in ("127.0.0.1", "localhost", "::1"):
        return [Check("database faults", "needs a local PostgreSQL with pg_ctlcluster", False)]
    with Setup(ctx, "3-database-faults") as s:
        s.cluster.start_api()
        start_workers(s.cluster, 3, concurrency=4)
        assert s.cluster.wait_api()
        load = LoadGen(s.cluster.api_url, 16, work(20), ctx.scale(1500, 600)).start()
        downs = []
        for fault in ("restart-fast", "terminate-backends", "crash-immediate"):
            time.sleep(2.5)
            began = time.monotonic()
            if fault == "restart-fast":
                _pg_ctl("restart", "-m", "fast")
            elif fault == "crash-immediate":
                _pg_ctl("stop", "-m", "immediate")
                time.sleep(1.0)
                _pg_ctl("start")
            else:
                with psycopg.connect(ctx.admin_url, autocommit=True) as c:
                    c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (s.dbs.name,))
            wait_until(lambda: _pg_ready(ctx.admin_url), 60, 0.2)
            downs.append(f"{fault} {time.monotonic() - began:.1f}s")
        checks = finish(s, load, drain_s=180)
        alive = [p.name for p in s.cluster.procs if not p.alive()]
        checks.append(Check("processes survived", f"{len(alive)} exited ({', '.join(downs)})",
                            not alive))
        return checks


def api_kills(ctx: Ctx) -> list[Check]:
    """The API killed in the middle of submissions; clients retry with idempotency keys."""
    with Setup(ctx, "4-api-kills") as s:
        api = s.cluster.start_api()
        start_workers(s.cluster, 2)
        assert s.cluster.wait_api()
        load = LoadGen(s.cluster.api_url, 16, work(5), ctx.scale(2000, 800)).start()
        for _ in range(ctx.scale(5, 3)):
            time.sleep(ctx.rng.uniform(0.5, 1.5))
            s.cluster.restart(api)  # SIGKILL, then start again
        return finish(s, load)


def zombies(ctx: Ctx) -> list[Check]:
    """A worker frozen with SIGSTOP past its lease; a worker whose database link is cut."""
    checks: list[Check] = []
    with Setup(ctx, "5-zombies") as s:
        host, port = server_address(s.dbs.jobq_url)
        proxy = BlackholeProxy(host or "127.0.0.1", port or 5432)
        via_proxy = with_server(s.dbs.jobq_url, "127.0.0.1", proxy.port)
        try:
            frozen = s.cluster.start_worker(0, "--concurrency", "4")
            cut = s.cluster.start_worker(1, "--concurrency", "4",
                                         JOBQ_DATABASE_URL=via_proxy)
            store = s.store()
            try:
                wait_until(lambda: len(store.stats(60).workers) == 2, 30)
                from jobq.types import NewJob

                ids = [store.enqueue(NewJob("chaos.work", {"ms": 4000})).job.id
                       for _ in range(8)]
                wait_until(lambda: store.stats(60).jobs["running"] == 8, 30)
                frozen.signal(signal.SIGSTOP)
                proxy.cut()
                helper = s.cluster.start_worker(2, "--concurrency", "8")
                # Past the lease and a rescue pass, the helper has run every job again.
                wait_until(lambda: all(store.get(i, with_attempts=False).state is JobState.DONE
                                       for i in ids), 60)
                time.sleep(0.5)
                frozen.signal(signal.SIGCONT)
                proxy.heal()
                time.sleep(LEASE + 2)  # the zombies finish their handlers and try to write
                jobs = {i: store.get(i) for i in ids}
                ledger = read_ledger(s.dbs.ledger_url)
                zombie_pids = {frozen.pid, cut.pid}
                zombie_ends = [e for e in ledger if e.pid in zombie_pids and e.ended is not None]
                won = [j.id for j in jobs.values()
                       if isinstance(j.result, dict) and j.result.get("pid") in zombie_pids]
                by_helper = [j.id for j in jobs.values() if j.state is JobState.DONE
                             and isinstance(j.result, dict) and j.result.get("pid") == helper.pid]
                checks.append(Check(
                    "stale writes", f"{len(won)} zombie results accepted; {len(zombie_ends)} "
                    f"zombie executions finished late and were refused; {len(by_helper)}/8 done "
                    "by the healthy worker", not won and len(by_helper) == 8
                    and len(zombie_ends) > 0))
                lost_ok = all(jobs[i].attempt_log[0].outcome is AttemptOutcome.LOST for i in ids)
                checks.append(Check("fencing", "every zombie attempt recorded as lost"
                                    if lost_ok else "a zombie attempt was not recorded as lost",
                                    lost_ok))
                checks += common_checks(store, ledger, None, drain(store, 30),
                                        concurrency_expected=True)
            finally:
                store.dispose()
        finally:
            proxy.close()
    return checks


def sigterm_drain(ctx: Ctx) -> list[Check]:
    """SIGTERM with a job longer than the grace period: released, not charged, done elsewhere."""
    with Setup(ctx, "6-sigterm-drain") as s:
        from jobq.types import NewJob

        store = s.store()
        try:
            a = s.cluster.start_worker(0, "--concurrency", "4")
            wait_until(lambda: len(store.stats(60).workers) == 1, 30)
            long = store.enqueue(NewJob("chaos.work", {"ms": 8000})).job.id
            short = [store.enqueue(NewJob("chaos.work", {"ms": 500})).job.id for _ in range(3)]
            wait_until(lambda: store.stats(60).jobs["running"] == 4, 20)
            sent = time.monotonic()
            a.signal(signal.SIGTERM)
            assert a.popen is not None
            code = a.popen.wait(30)
            took = time.monotonic() - sent
            released = store.get(long)
            b = s.cluster.start_worker(1, "--concurrency", "4")
            checks = [
                Check("drain exit", f"exit {code} after {took:.1f}s (grace 2s)",
                      code == 0 and took < 2 + 3),
                Check("released", f"long job {released.state}, attempts {released.attempts}, "
                      f"log {[str(x.outcome) for x in released.attempt_log]}",
                      released.state is JobState.PENDING and released.attempts == 0
                      and [x.outcome for x in released.attempt_log] == [AttemptOutcome.RELEASED]),
                Check("finished in grace", f"{sum(store.get(i).state is JobState.DONE for i in short)}"
                      "/3 short jobs done before exit",
                      all(store.get(i).state is JobState.DONE for i in short)),
            ]
            drained = drain(store, 60)
            checks += common_checks(store, read_ledger(s.dbs.ledger_url), None, drained)
            del b
            return checks
        finally:
            store.dispose()


def poison_pills(ctx: Ctx) -> list[Check]:
    """Jobs that kill their own worker end failed after max_attempts; the rest keeps flowing."""
    with Setup(ctx, "7-poison-pills") as s:
        s.cluster.start_api()
        s.cluster.start("workers", ["worker", "--processes", "2", "--concurrency", "4"])
        assert s.cluster.wait_api()
        with httpx.Client(base_url=s.cluster.api_url, timeout=10) as c:
            poison = [c.post("/jobs", json={"task_type": "chaos.poison", "max_attempts": 2,
                                            "idempotency_key": f"poison-{i}"}).json()["id"]
                      for i in range(ctx.scale(4, 2))]
        load = LoadGen(s.cluster.api_url, 8, work(20), ctx.scale(600, 200)).start()
        checks = finish(s, load, drain_s=180, expect_failed=set(poison))
        store = s.store()
        try:
            states = [store.get(i) for i in poison]
        finally:
            store.dispose()
        ok = all(j.state is JobState.FAILED and j.attempts == j.max_attempts for j in states)
        checks.append(Check("poison", f"{sum(j.state is JobState.FAILED for j in states)}/"
                            f"{len(states)} poison jobs failed after max_attempts", ok))
        return checks


def retry_storm(ctx: Ctx) -> list[Check]:
    """A downstream that fails for 20 s, then recovers: retries spread out, all done after."""
    from jobq.chaos.ledger import switch_on

    outage = ctx.scale(20, 8)
    cap = 4.0
    with Setup(ctx, "8-retry-storm") as s:
        s.cluster.start_api()
        # Slots to spare: a retry that waits for a free slot would look like a delay past
        # the cap, and this campaign measures the backoff, not the throughput.
        start_workers(s.cluster, 2, concurrency=32, JOBQ_BACKOFF_BASE_SECONDS="0.5",
                      JOBQ_BACKOFF_CAP_SECONDS=str(cap))
        assert s.cluster.wait_api()
        switch_on(s.dbs.ledger_url, "downstream", outage)
        n = 100
        load = LoadGen(s.cluster.api_url, 8, lambda i: {"task_type": "chaos.flaky",
                                                        "max_attempts": 40}, n).start()
        checks = finish(s, load, drain_s=outage + 120)
        ledger = read_ledger(s.dbs.ledger_url)
        by_job: dict[int, list[Execution]] = defaultdict(list)
        for e in ledger:
            by_job[e.job_id].append(e)
        gaps = [b.started - a.ended for runs in by_job.values()
                for a, b in zip(runs, runs[1:]) if a.ended is not None]
        slack = 0.2 + 1.0  # a poll interval and scheduling
        over_cap = sum(1 for g in gaps if g > cap + slack)
        # Waves: retries bunched in one 0.5 s bin; with full jitter no bin holds a big share.
        starts = [e.started for e in ledger if e.attempt > 1]
        bins = Counter(int(t / 0.5) for t in starts)
        peak = max(bins.values()) / max(len(starts), 1) if bins else 0.0
        cv = statistics.pstdev(gaps) / statistics.mean(gaps) if len(gaps) > 2 else 0.0
        checks.append(Check("backoff", f"{len(gaps)} retries, gap mean "
                            f"{statistics.mean(gaps) if gaps else 0:.2f}s cv {cv:.2f}, "
                            f"{over_cap} past the cap ({cap}s), busiest 0.5s bin "
                            f"{peak:.0%} of retries", over_cap == 0 and peak <= 0.15
                            and cv >= 0.3))
        return checks


def heartbeats(ctx: Ctx) -> list[Check]:
    """A long job with heartbeats is never rescued; with heartbeats off (the negative control)
    it is."""
    from jobq.types import NewJob

    checks: list[Check] = []
    for enabled in (True, False):
        name = "9-heartbeats" if enabled else "9-heartbeats-off"
        with Setup(ctx, name) as s:
            store = s.store()
            try:
                env = {"JOBQ_LEASE_SECONDS": "1.5", "JOBQ_RESCUE_INTERVAL_SECONDS": "0.5",
                       "JOBQ_HEARTBEAT_ENABLED": str(enabled).lower()}
                start_workers(s.cluster, 2, concurrency=2, **env)
                wait_until(lambda: len(store.stats(60).workers) == 2, 30)
                job_id = store.enqueue(NewJob("chaos.work", {"ms": 6000})).job.id
                drain(store, 40)
                ledger = [e for e in read_ledger(s.dbs.ledger_url) if e.job_id == job_id]
                job = store.get(job_id)
                if enabled:
                    checks.append(Check("long job, heartbeats on",
                                        f"{len(ledger)} execution(s), {job.attempts} attempt(s), "
                                        f"{job.state}", len(ledger) == 1 and job.attempts == 1
                                        and job.state is JobState.DONE))
                else:
                    seen = len(ledger) > 1 or any(a.outcome is AttemptOutcome.LOST
                                                  for a in job.attempt_log)
                    checks.append(Check("negative control, heartbeats off",
                                        f"{len(ledger)} executions, rescued: {seen} (the check "
                                        "must see the bug)", seen))
            finally:
                store.dispose()
    return checks


def skewed_clocks(ctx: Ctx) -> list[Check]:
    """Workers whose clocks are two hours fast or slow (faketime) change nothing."""
    if shutil.which("faketime") is None:
        return [Check("skewed clocks", "needs faketime (apt-get install faketime)", False)]
    with Setup(ctx, "10-skewed-clocks") as s:
        s.cluster.start_api()
        for i, skew in enumerate(("+2h", "-2h", "+7m")):
            s.cluster.start_worker(i, "--concurrency", "4", prefix=["faketime", "-f", skew],
                                   FAKETIME_DONT_FAKE_MONOTONIC="1")
        assert s.cluster.wait_api()
        load = LoadGen(s.cluster.api_url, 8, work(50), ctx.scale(600, 200)).start()
        checks = finish(s, load)
        store = s.store()
        try:
            jobs = all_jobs(store)
            lost = sum(1 for j in list(jobs.values())[:200] for a in store.get(j.id).attempt_log
                       if a.outcome is AttemptOutcome.LOST)
        finally:
            store.dispose()
        checks.append(Check("leases under skew", f"{lost} leases lost", lost == 0))
        return checks


def pool_exhaustion(ctx: Ctx) -> list[Check]:
    """Connection pool exhausted: quick 503s, no hang, no 500."""
    with Setup(ctx, "11-pool-exhaustion") as s:
        s.cluster.start_api(JOBQ_DB_POOL_SIZE="2", JOBQ_DB_MAX_OVERFLOW="0",
                            JOBQ_DB_TIMEOUT_SECONDS="1")
        assert s.cluster.wait_api()
        lock_s = 4.0
        results: list[tuple[int, float, bool]] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            with httpx.Client(base_url=s.cluster.api_url, timeout=30) as c:
                end = time.monotonic() + lock_s + 2
                while time.monotonic() < end:
                    t = time.monotonic()
                    try:
                        r = (c.get("/stats") if i % 2 else c.post(
                            "/jobs", json={"task_type": "chaos.work", "payload": {"ms": 1}}))
                        item = (r.status_code, time.monotonic() - t,
                                bool(r.headers.get("retry-after")))
                    except httpx.HTTPError:
                        item = (0, time.monotonic() - t, False)
                    with lock:
                        results.append(item)

        with psycopg.connect(s.dbs.jobq_url) as blocker:
            blocker.execute("LOCK TABLE jobq_jobs IN ACCESS EXCLUSIVE MODE")
            threads = [threading.Thread(target=client, args=(i,), daemon=True)
                       for i in range(12)]
            for t in threads:
                t.start()
            time.sleep(lock_s)
            blocker.rollback()
        for t in threads:
            t.join(60)
        hung = [t for t in threads if t.is_alive()]
        e500 = sum(1 for code, _, _ in results if code == 500 or code == 0)
        quick = [d for code, d, _ in results if code == 503]
        no_retry_after = sum(1 for code, _, ra in results if code == 503 and not ra)
        slowest = max((d for _, d, _ in results), default=0.0)
        return [
            Check("server errors", f"{e500} 500s or dropped connections of {len(results)}",
                  e500 == 0),
            Check("quick 503s", f"{len(quick)} 503s, slowest {max(quick, default=0):.2f}s, "
                  f"{no_retry_after} without Retry-After",
                  bool(quick) and max(quick) <= 2.0 and no_retry_after == 0),
            Check("no hang", f"slowest response {slowest:.2f}s (lock held {lock_s}s), "
                  f"{len(hung)} clients hung", not hung and slowest <= lock_s + 3),
        ]


def sqlite_kills(ctx: Ctx) -> list[Check]:
    """SQLite: the API and four workers on one file, workers killed; nothing lost, no 500."""
    with Setup(ctx, "12-sqlite", sqlite=True) as s:
        s.cluster.start_api()
        workers = start_workers(s.cluster, 4, concurrency=4)
        assert s.cluster.wait_api()
        load = LoadGen(s.cluster.api_url, 16, work(50), ctx.scale(1000, 400)).start()
        for _ in range(ctx.scale(4, 2)):
            time.sleep(ctx.rng.uniform(1.0, 2.0))
            s.cluster.restart(ctx.rng.choice(workers))
        checks = finish(s, load)
        locked = sum(p.read_text(errors="replace").count("database is locked")
                     for p in s.cluster.log_dir.glob("api*.log"))
        checks.append(Check("database is locked", f"{locked} in the API's log", locked == 0))
        return checks


CAMPAIGNS: dict[str, Campaign] = {
    "1": baseline,
    "2": worker_kills,
    "3": database_faults,
    "4": api_kills,
    "5": zombies,
    "6": sigterm_drain,
    "7": poison_pills,
    "8": retry_storm,
    "9": heartbeats,
    "10": skewed_clocks,
    "11": pool_exhaustion,
    "12": sqlite_kills,
}
#: The reduced run that CI does.
REDUCED = ["1", "2", "3", "4", "7", "12"]
