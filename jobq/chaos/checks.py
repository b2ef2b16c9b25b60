"""What a campaign checks and how: the ledger and the store read back after a run, and the
invariants (nothing lost, no duplicates, attempts bounded, nothing stuck, quick recovery)
turned into one line each."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import dataclass

import psycopg

from jobq.chaos.load import LoadGen
from jobq.harness import wait_until
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
        unexpected = sorted(failed - (expect_failed or set()))
        first = jobs[unexpected[0]] if unexpected else None
        why = ("" if first is None else
               f" (job {first.id}, {first.attempts} attempt(s): {(first.last_error or '')[:200]!r})")
        checks.append(Check("unexpected failures", f"{len(unexpected)} "
                            f"jobs failed that should not have{why}", False))
    return checks


def store_attempt_rows(store: SqlStore, executions: Counter[int]) -> dict[int, tuple[int, int]]:
    """(recorded attempts, ledger executions) for every job that executed more than once."""
    out = {}
    for job_id, n in executions.items():
        if n > 1:
            out[job_id] = (len(store.get(job_id).attempt_log), n)
    return out


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

