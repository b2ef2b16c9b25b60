"""jobq behind a real PgBouncer (``jobq.harness.PgBouncer``), in session and in transaction
mode: a real API process and real worker processes, all connected through it.

Before JOBQ_DB_POOLER, transaction mode broke within seconds: psycopg prepares a statement
after its 5th execution, under a name that lives in one server connection, and the pooler
hands the next transaction another one ("prepared statement "_pg3_0" already exists", "bind
message supplies 2 parameters, but prepared statement … requires 12"). Idle workers died in
their claim; GETs answered 500. These tests make that happen (many idle polls, then load) and
check that nothing of it is left. PostgreSQL only; the checks read the database directly,
never through the pooler.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import event

from jobq.harness import PgBouncer, find_pgbouncer, free_port, wait_for, wait_until
from jobq.settings import load_settings
from jobq.store import open_store
from jobq.types import JobState, NewJob
from ledger_tasks import read_ledger
from procs import Procs, env_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REQUIRE_PG = os.environ.get("JOBQ_REQUIRE_POSTGRES", "") in {"1", "true", "yes"}
JOBS = 300
#: Longer than idle workers used to live behind a transaction pooler (they died within
#: 20 s, most within a few): at 0.1 s per poll, each has claimed ~100 times by then.
IDLE_SECONDS = 10.0
#: Signs of prepared statements crossing server connections, in any process's log.
PREPARED_ERRORS = ("prepared statement", "bind message supplies")
#: The LISTEN connections of this database (the server may serve other tests meanwhile).
LISTENERS = ("SELECT count(*) FROM pg_stat_activity "
             "WHERE application_name = 'jobq-listen' AND datname = current_database()")


@pytest.fixture
def database(pg_url: str) -> str:
    """The session's PostgreSQL database, emptied (a direct URL, not through PgBouncer)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobq_jobs, jobq_attempts, jobq_workers, jobq_api_keys "
                     "RESTART IDENTITY CASCADE")
    return pg_url


@pytest.fixture
def pgbouncer(database: str) -> Iterator[Callable[[str], PgBouncer]]:
    """Start PgBouncers in a pool mode before ``database``'s server; all stopped at the end."""
    if find_pgbouncer() is None:
        msg = "PgBouncer is not installed (scripts/system-packages.sh installs it; CI runs it)"
        if REQUIRE_PG:
            pytest.fail(f"JOBQ_REQUIRE_POSTGRES=1 but {msg}", pytrace=False)
        pytest.skip(msg)
    started: list[PgBouncer] = []

    def start(mode: str) -> PgBouncer:
        bouncer = PgBouncer(database, pool_mode=mode)
        started.append(bouncer)
        bouncer.start()
        return bouncer

    yield start
    for bouncer in started:
        bouncer.remove()


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute(sql).fetchone()[0])


def _logs(procs: Procs, bouncer: PgBouncer) -> str:
    """Every process's whole log, then PgBouncer's tail."""
    text = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                     for p in sorted(procs.log_dir.glob("*.log")))
    return f"{text}\n--- pgbouncer\n{bouncer.log()[-4000:]}"


def _start_api(procs: Procs, env: dict[str, str]) -> str:
    port = free_port()
    procs.start([sys.executable, "-m", "jobq", "api", "--port", str(port)], env, "api")
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 60, "the API to answer through PgBouncer")
    return base


class Traffic:
    """Submissions and concurrent reads over REST; every answer that is not 2xx is kept."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.ids: list[int] = []
        self.bad: list[str] = []
        self.answers = 0
        self.lock = threading.Lock()
        self.submitting = True

    def _call(self, client: httpx.Client, method: str, path: str, **kw: object) -> object:
        try:
            resp = client.request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            with self.lock:
                self.bad.append(f"{method} {path}: {exc!r}")
            return None
        with self.lock:
            self.answers += 1
            if not 200 <= resp.status_code < 300:
                self.bad.append(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
                return None
        return resp.json()

    def submit(self, n: int) -> None:
        with httpx.Client(base_url=self.base, timeout=30, trust_env=False) as client:
            for i in range(n):
                job = self._call(client, "POST", "/jobs",
                                 json={"task_type": "ledger", "payload": {"n": i}})
                if isinstance(job, dict):
                    with self.lock:
                        self.ids.append(job["id"])

    def read(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30, trust_env=False) as client:
            while self.submitting:
                with self.lock:
                    some = random.choice(self.ids) if self.ids else None
                if some is not None:
                    self._call(client, "GET", f"/jobs/{some}")
                self._call(client, "GET", "/stats")
                self._call(client, "GET", "/jobs", params={"limit": 20})

    def run(self, submitters: int = 6, readers: int = 3) -> None:
        per = JOBS // submitters
        writing = [threading.Thread(target=self.submit, args=(per,)) for _ in range(submitters)]
        reading = [threading.Thread(target=self.read) for _ in range(readers)]
        for t in writing + reading:
            t.start()
        for t in writing:
            t.join(120)
        self.submitting = False
        for t in reading:
            t.join(60)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_api_and_workers_through_pgbouncer(
    mode: str, pgbouncer: Callable[[str], PgBouncer], database: str, procs: Procs,
    tmp_path: Path,
) -> None:
    bouncer = pgbouncer(mode)
    ledger = str(tmp_path / "ledger.txt")
    # No faults here, so no lease may expire on a busy 2-core machine.
    env = env_for(bouncer.url(database), ledger, JOBQ_DB_POOLER=mode,
                  JOBQ_LEASE_SECONDS="30", JOBQ_POLL_INTERVAL_SECONDS="0.1")
    base = _start_api(procs, env)
    workers = [procs.worker(env, "--concurrency", "8") for _ in range(2)]
    wait_for(lambda: _count(database, "SELECT count(*) FROM jobq_workers") >= 2, 60,
             "both workers to register")
    time.sleep(IDLE_SECONDS)  # idle polls: psycopg would prepare its statements by now
    assert [w.poll() for w in workers] == [None, None], _logs(procs, bouncer)

    traffic = Traffic(base)
    traffic.run()
    assert not traffic.bad, (f"{len(traffic.bad)} of {traffic.answers} requests failed: "
                             f"{traffic.bad[:5]}\n{_logs(procs, bouncer)}")
    assert len(traffic.ids) == JOBS
    if not wait_until(lambda: _count(database, "SELECT count(*) FROM jobq_jobs WHERE state "
                                     "IN ('done', 'failed')") == JOBS, 90, 0.5):
        pytest.fail(f"not all {JOBS} jobs finished within 90 s\n{_logs(procs, bouncer)}")

    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute("SELECT id, state, attempts FROM jobq_jobs").fetchall()
    assert sorted(r[0] for r in rows) == sorted(traffic.ids)
    wrong = [r for r in rows if r[1] != "done" or r[2] != 1]
    assert not wrong, f"not done in one attempt: {wrong[:5]}\n{_logs(procs, bouncer)}"
    runs = read_ledger(ledger)
    starts = Counter(job for kind, job, *_ in runs if kind == "start")
    assert set(starts) == set(traffic.ids) and max(starts.values()) == 1, starts.most_common(3)
    assert {pid for *_, pid, _at in runs} <= {w.pid for w in workers}
    assert [p.alive() for p in procs.procs] == [True] * 3, _logs(procs, bouncer)
    logs = _logs(procs, bouncer)
    assert not [e for e in PREPARED_ERRORS if e in logs], logs


def _idle_worker(procs: Procs, database: str, env: dict[str, str]) -> None:
    procs.worker(env)
    wait_for(lambda: _count(database, "SELECT count(*) FROM jobq_workers") >= 1, 60,
             "the worker to register")
    time.sleep(1.5)  # its first poll is behind it, and LISTEN (if any) is in place


def _picked_up_within(store_url: str, seconds: float) -> float | None:
    """Enqueue a job through ``store_url`` (a transaction pooler); how long it took to be
    done, or None past ``seconds``."""
    store = open_store(load_settings(database_url=store_url, db_pooler="transaction"))
    try:
        job_id = store.enqueue(NewJob("echo", "x")).job.id
        began = time.monotonic()
        if wait_until(lambda: store.get(job_id).state is JobState.DONE, seconds, 0.05):
            return time.monotonic() - began
        return None
    finally:
        store.dispose()


@pytest.mark.timeout(120)
def test_transaction_mode_keeps_wake_ups_through_the_listen_url(
    pgbouncer: Callable[[str], PgBouncer], database: str, procs: Procs
) -> None:
    """LISTEN goes straight to PostgreSQL; the NOTIFY rides on the enqueue, through the
    pooler. With a 30 s poll interval, a pickup within seconds was a wake-up."""
    bouncer = pgbouncer("transaction")
    url = bouncer.url(database)
    _idle_worker(procs, database, env_for(url, JOBQ_DB_POOLER="transaction",
                                          JOBQ_LISTEN_URL=database,
                                          JOBQ_POLL_INTERVAL_SECONDS="30"))
    # The LISTEN connection is a direct one: no client of PgBouncer's is the listener.
    assert _count(database, LISTENERS) == 1
    assert "jobq-listen" not in {c["application_name"] for c in bouncer.show("CLIENTS")}
    for _ in range(3):
        took = _picked_up_within(url, 5)
        assert took is not None, _logs(procs, bouncer)


@pytest.mark.timeout(120)
def test_transaction_mode_without_listen_url_falls_back_to_polling(
    pgbouncer: Callable[[str], PgBouncer], database: str, procs: Procs
) -> None:
    bouncer = pgbouncer("transaction")
    url = bouncer.url(database)
    _idle_worker(procs, database, env_for(url, JOBQ_DB_POOLER="transaction",
                                          JOBQ_POLL_INTERVAL_SECONDS="0.5"))
    assert _picked_up_within(url, 10) is not None, _logs(procs, bouncer)
    logs = _logs(procs, bouncer)
    assert "no LISTEN, so idle workers find new jobs by polling" in logs, logs
    listening = {c["application_name"] for c in bouncer.show("CLIENTS")}
    assert "jobq-listen" not in listening and _count(database, LISTENERS) == 0


@pytest.mark.timeout(60)
def test_transaction_mode_leaves_no_session_settings_on_shared_server_connections(
    pgbouncer: Callable[[str], PgBouncer], database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """jobq's timeouts, set per session, would stay on whichever server connection ran the
    SET and reach the pooler's later clients; behind a transaction pooler only the time zone
    (which PgBouncer carries per client) is set, and a warning says where the timeouts go."""
    bouncer = pgbouncer("transaction")
    with psycopg.connect(database) as direct:
        default = direct.execute("SHOW statement_timeout").fetchone()[0]
    store = open_store(load_settings(database_url=bouncer.url(database),
                                     db_pooler="transaction"))
    try:
        for _ in range(10):
            store.get(store.enqueue(NewJob("echo", "x")).job.id)
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
    finally:
        store.dispose()
    assert "set them on jobq's role" in caplog.text
    # As many clients at once, each inside a transaction, as the pool has server connections:
    # together they see every one of them.
    others = [psycopg.connect(bouncer.url(database), prepare_threshold=None)
              for _ in range(bouncer.pool_size or 4)]
    try:
        seen = [c.execute("SHOW statement_timeout").fetchone()[0] for c in others]
    finally:
        for c in others:
            c.close()
    assert seen == [default] * len(others)


def test_timestamps_read_right_whatever_the_session_time_zone(database: str) -> None:
    """jobq sets its sessions to UTC (a SET that PgBouncer, in transaction mode, carries from
    server connection to server connection); should a session be in another zone all the
    same (another pooler, a server-side default), jobq's timestamps still read right."""
    store = open_store(load_settings(database_url=database))

    @event.listens_for(store.engine, "connect")  # after jobq's own SET TIME ZONE 'UTC'
    def _elsewhere(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.execute("SET TIME ZONE 'Asia/Kathmandu'")  # +05:45, no DST
        dbapi_conn.commit()

    try:
        store.engine.dispose()  # new connections, with the listener
        at = datetime(2031, 3, 4, 5, 6, 7, 890000, tzinfo=timezone.utc)
        job = store.get(store.enqueue(NewJob("echo", "x", run_at=at)).job.id)
        assert job.run_at == at and job.run_at.utcoffset() == timedelta(0)
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "Asia/Kathmandu"
        assert abs(job.created_at - datetime.now(timezone.utc)) < timedelta(minutes=1)
        assert job.created_at.utcoffset() == timedelta(0)
    finally:
        store.dispose()
