"""Campaigns that kill, freeze or cut off the processes: workers and the API killed, zombie
workers, a SIGTERM drain, SQLite under worker kills."""

from __future__ import annotations

import signal
import time

from jobq.chaos.checks import (
    LEASE,
    Check,
    busy_pids,
    common_checks,
    drain,
    read_ledger,
    recovery_check,
    registered_pids,
)
from jobq.chaos.load import LoadGen
from jobq.chaos.proxy import BlackholeProxy
from jobq.chaos.setup import Ctx, Setup, finish, start_workers, work
from jobq.harness import server_address, wait_until, with_server
from jobq.types import AttemptOutcome, JobState


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
