"""Failover: jobq's database on a primary with a synchronous streaming standby, both servers
of their own on this machine (PgCluster); the primary stopped hard under load and the standby
promoted, as an operator or a tool such as Patroni would.

jobq is pointed at both by one multi-host URL (``host=a,b``, ``target_session_attrs=
read-write``) and given no help: no process is restarted, no setting changed. The ledger stays
on the machine's own server (the admin URL), so it outlives the failover and still catches
two executions of one job at once.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg

from jobq.chaos.checks import Check, all_jobs, read_ledger, registered_pids
from jobq.chaos.cluster import Databases, chaos_cluster
from jobq.chaos.load import LoadGen
from jobq.chaos.setup import Ctx, Setup, finish, start_workers
from jobq.harness import PgCluster, missing_programs, wait_until
from jobq.settings import load_settings
from jobq.store import open_store
from jobq.types import AttemptOutcome, JobState

#: From the primary's end to the promotion: the detection of an operator, or of a tool such
#: as Patroni (its loop is 10 s by default; 2 s keeps the campaign short). Longer ones, past
#: the lease (3 s here), with JOBQ_CHAOS_FAILOVER_DETECTION_SECONDS.
DETECTION_S = 2.0
DETECTION_ENV = "JOBQ_CHAOS_FAILOVER_DETECTION_SECONDS"
#: Load before the stop, and after the first success once promoted.
BEFORE_S, AFTER_S = 5.0, 5.0
#: The most the window may last beyond the detection, and the workers to claim again after
#: the promotion (a lost lease is rescued after LEASE + RESCUE; a claim comes within a poll).
BACK_WITHIN_S = 10.0

PROGRAMS = ("initdb", "pg_ctl", "pg_basebackup")


def pair_url(primary: PgCluster, standby: PgCluster, database: str) -> str:
    """libpq's multi-host URL for both servers: the first that takes writes is the one."""
    return (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/"
            f"{database}?target_session_attrs=read-write")


@dataclass
class PairSetup(Setup):
    """A campaign's Setup whose jobq database is on a primary and its synchronous standby;
    the ledger (and the unused jobq database of Databases) stays on the admin server."""

    primary: PgCluster = field(init=False)
    standby: PgCluster | None = field(init=False, default=None)

    def __enter__(self) -> PairSetup:
        run_dir = self.ctx.out_dir / self.name
        run_dir.mkdir(parents=True, exist_ok=True)
        self.dbs = Databases(self.ctx.admin_url)
        self.primary = PgCluster.primary()
        try:
            self.dbs.create()
            self.primary.init().start()
            self.standby = self.primary.standby().start()
            if not wait_until(lambda: self.primary.sync_standbys(), 30, 0.1):
                raise RuntimeError("the standby did not become synchronous")
            with psycopg.connect(self.primary.url(), autocommit=True) as c:
                c.execute("CREATE DATABASE jobq")
            self.db_url = pair_url(self.primary, self.standby, "jobq")
            open_store(load_settings(database_url=self.db_url)).dispose()  # migrate, up front
            self.cluster = chaos_cluster(run_dir, self.db_url, self.dbs.ledger_url)
        except BaseException:
            self._remove_servers()
            raise
        return self

    def _remove_servers(self) -> None:
        try:
            for server in (self.primary, self.standby):
                if server is not None:
                    server.remove()
        finally:
            self.dbs.drop()

    def __exit__(self, *exc: object) -> None:
        try:
            self.cluster.stop()
        finally:
            self._remove_servers()


def _window(load: LoadGen, stopped: float) -> tuple[float, float, list[int]] | None:
    """As the clients saw it: the first answer that failed after the stop, the first 2xx to a
    request sent after that, and every status answered in between."""
    with load._lock:
        responses = sorted(load.responses, key=lambda r: r[1])
    failed = [r for r in responses if r[1] >= stopped and r[2] not in (200, 201)]
    if not failed:
        return None
    began = failed[0][1]
    back = [r for r in responses if r[0] > began and r[2] in (200, 201)]
    ended = min((r[1] for r in back), default=float("inf"))
    between = [r[2] for r in responses if began <= r[1] <= ended and r[2] not in (200, 201)]
    return began, ended, between


def failover(ctx: Ctx) -> list[Check]:
    """Failover: the primary stopped hard under load, its synchronous standby promoted."""
    missing = missing_programs(PROGRAMS)
    if missing:
        return [Check("skipped", f"no PostgreSQL server programs ({', '.join(missing)}; PATH "
                      "or /usr/lib/postgresql/*/bin): the failover campaign needs them", True)]
    detection = float(os.environ.get(DETECTION_ENV) or DETECTION_S)
    with PairSetup(ctx, "15-failover") as s:
        assert s.standby is not None
        api = s.cluster.start_api()
        workers = start_workers(s.cluster, 2, concurrency=8)
        procs = [api, *workers]
        pids = {p.name: p.pid for p in procs}
        assert s.cluster.wait_api()
        checker = s.store()
        try:
            wait_until(lambda: {w.pid for w in workers} <= registered_pids(checker), 30, 0.2)
        finally:
            checker.dispose()  # its connections would only die with the primary
        load = LoadGen(s.cluster.api_url, 8, lambda i: {"task_type": "chaos.work",
                                                        "payload": {"ms": 50}},
                       100_000, deadline_s=120).start()
        time.sleep(BEFORE_S)
        sync = s.primary.sync_standbys()
        stopped = time.time()
        s.primary.stop(hard=True)  # immediate: every backend gone at once, no checkpoint
        time.sleep(max(stopped + detection - time.time(), 0))
        promoting = time.time()
        s.standby.promote()
        promoted = time.time()
        # Load goes on until the clients have been served again for a while.
        wait_until(lambda: any(r[0] > promoted and r[2] in (200, 201)
                               for r in list(load.responses)), 30, 0.1)
        time.sleep(AFTER_S)
        load.stop()
        checks = [Check("synchronous standby", f"{', '.join(sync) or 'none'} streaming in sync "
                        "at the stop", bool(sync))]
        checks += finish(s, load, drain_s=60)

        window = _window(load, stopped)
        if window is None:
            checks.append(Check("unavailability", "no request failed after the stop", False))
        else:
            began, ended, between = window
            n503 = sum(1 for code in between if code == 503)
            other = len(between) - n503
            checks.append(Check(
                "unavailability", f"{ended - began:.2f}s as clients saw it (stop at 0: first "
                f"failure +{began - stopped:.2f}s, promotion +{promoting - stopped:.2f}s "
                f"(took {promoted - promoting:.2f}s), first 2xx +{ended - stopped:.2f}s)",
                ended - began <= detection + BACK_WITHIN_S))
            checks.append(Check(
                "503s meanwhile", f"{n503} (with Retry-After: {load.good_503} of the run's "
                f"{load.good_503 + load.bad_503}); other failures {other}, dropped "
                f"connections {load.conn_errors}", other == 0 and load.conn_errors == 0))

        store = s.store()
        try:
            jobs = all_jobs(store)
            # How the attempts that did not finish ended (lost: the lease lapsed, rescued).
            ended = Counter(str(a.outcome) for j in jobs.values() if j.attempts > 1
                            for a in store.get(j.id).attempt_log if a.outcome
                            is not AttemptOutcome.DONE)
        finally:
            store.dispose()
        before = [sub for sub in load.accepted if sub.acked_at is not None
                  and sub.acked_at < stopped]
        gone = [sub for sub in before if sub.job_id not in jobs]
        not_done = [sub for sub in before if sub.job_id in jobs
                    and jobs[sub.job_id].state is not JobState.DONE]
        checks.append(Check(
            "answered before", f"{len(gone)} missing, {len(not_done)} not done of the "
            f"{len(before)} jobs answered 2xx before the stop", not gone and not not_done
            and bool(before)))
        ledger = read_ledger(s.dbs.ledger_url)
        in_flight = sum(1 for e in ledger if e.started <= stopped
                        and (e.ended is None or e.ended >= stopped))
        rerun = sum(1 for j in jobs.values() if j.attempts > 1)
        checks.append(Check("leases", f"{in_flight} executions under way at the stop; jobs run "
                            f"again: {rerun} (earlier attempts: "
                            + (", ".join(f"{n} {o}" for o, n in sorted(ended.items())) or "none")
                            + ")", True))
        resumed = []
        for w in workers:
            starts = [e.started for e in ledger if e.pid == w.pid and e.started > promoted]
            resumed.append(min(starts) - promoted if starts else float("inf"))
        checks.append(Check(
            "workers resumed", "first claims after the promotion: "
            + ", ".join(f"{w.name} +{r:.2f}s" for w, r in zip(workers, resumed)),
            max(resumed) <= BACK_WITHIN_S))
        dead = [p.name for p in procs if not p.alive() or pids[p.name] != p.pid]
        # The workers' LISTEN connections too (their own libpq string, listen_dsn): back on
        # the promoted server, or wake-ups would have fallen back to polling for good.
        listening = 0

        def count_listening() -> bool:
            nonlocal listening
            listening = _sessions(s.standby, "jobq-listen")
            return listening >= len(workers)

        wait_until(count_listening, 15, 0.2)
        checks.append(Check("by themselves", f"{len(procs) - len(dead)} of {len(procs)} "
                            "processes up throughout, none restarted, no setting changed; "
                            f"LISTEN back for {listening} of {len(workers)} workers"
                            + (f" (exited: {', '.join(dead)})" if dead else ""),
                            not dead and listening >= len(workers)))
        return checks


def _sessions(server: PgCluster, application_name: str) -> int:
    try:
        with psycopg.connect(server.url(), connect_timeout=2) as c:
            return int(c.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                 "application_name = %s", (application_name,)).fetchone()[0])
    except psycopg.Error:
        return 0
