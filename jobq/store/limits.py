"""Limits across the cluster, enforced by the claim: per-queue concurrency (at most N of a
queue's jobs running at once), per-queue rate (at most R starts per second, in bursts of at
most B), and per-key concurrency (at most L running jobs with one ``concurrency_key``).

**The unlimited claim never takes a limited job.** ``Leases._claim``, the one-statement claim
of every worker, leaves out, in the statement itself, the jobs of queues that have a limit
(as it leaves out paused queues) and jobs that have a concurrency key. So whatever a worker
believes about limits, and however stale, it cannot exceed one.

**The limited claim serialises exactly what must be serialised**, in one transaction:

1. the rows of the limited queues it serves, locked (``FOR UPDATE``, in name order), so
   claims of one limited queue take turns, and the token bucket is read and written under
   the lock;
2. the running jobs of those queues, counted (READ COMMITTED: each statement sees every claim
   committed before the lock was granted), which gives each queue's budget: free slots,
   concurrency − running, whole tokens;
3. candidates, ``FOR UPDATE SKIP LOCKED`` as any claim (keys already at their limit left
   out), then, for the keys among them, each key's lock (an advisory lock on its hash,
   tried without waiting: a key whose lock another claim holds is skipped) and a count of
   its running jobs;
4. pending → running for the candidates that fit every budget, and the tokens spent.

The only locks waited for are the queue rows, always in name order and first, so two
claims cannot wait for each other in a cycle. On SQLite the claim's write lock
(``BEGIN IMMEDIATE``) serialises everything already. Nothing counts running jobs but the
jobs table, so a worker that dies with limited jobs leaks nothing: rescue moves them out of
running, and the next count sees it.

A worker finds out whether it needs the limited claim from a view of its queues cached for
``LIMITS_TTL`` seconds: which have limits, and which have keyed jobs waiting. A limit set
meanwhile holds at once (the unlimited claim leaves the queue alone); its jobs wait that long
at most for a limited claim to take them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Float, String, bindparam, func, select, update

from jobq.store.base import StoreBase, translate
from jobq.store.exprs import db_now, key_lock, new_token, seconds_from_now
from jobq.store.queues import queue_info
from jobq.store.tables import jobs, queues
from jobq.types import JobState, QueueInfo

PENDING, RUNNING = JobState.PENDING.value, JobState.RUNNING.value

#: Seconds a worker's view of which of its queues need the limited claim is kept.
LIMITS_TTL = 0.5
#: Candidates read per claim beyond its budget, for keyed jobs a key limit holds back.
KEYED_LOOKAHEAD = 100


class Limits(StoreBase):
    _limits_lock = threading.Lock()

    @translate
    def set_queue_limits(self, name: str, *, concurrency: int | None, rate: float | None,
                         burst: int | None) -> QueueInfo:
        """Set (or, with None, clear) a queue's limits across the cluster: at most
        ``concurrency`` of its jobs running at once; at most ``rate`` starts per second, in
        bursts of at most ``burst`` (default: the rate, at least 1). The bucket starts full.
        Checked by the caller (``JobService.set_queue_limits``)."""
        if rate is not None and burst is None:
            burst = max(1, math.ceil(rate))
        if rate is None:
            burst = None
        with self.write() as conn:
            values = {"concurrency": concurrency, "rate": rate, "burst": burst,
                      "tokens": None if burst is None else float(burst),
                      "tokens_at": None if burst is None else db_now()}
            ins = self.dialect.insert(queues).values(name=name, paused=False, **values)
            conn.execute(ins.on_conflict_do_update(index_elements=[queues.c.name],
                                                   set_=values))
            self.dialect.wake(conn, [name])  # a limit raised or lifted: claim again
            info = queue_info(conn, name)
        self._forget_limits()
        return info

    # -- which claim ---------------------------------------------------------------------------

    def _forget_limits(self) -> None:
        with self._limits_lock:
            self.__dict__.pop("_limits_view", None)

    def limited_view(self, worker_queues: Sequence[str]) -> tuple[frozenset[str], frozenset[str]]:
        """Of ``worker_queues``: those with a limit, and those with keyed jobs waiting
        (cached for LIMITS_TTL)."""
        key = tuple(worker_queues)
        now = time.monotonic()
        cache: dict[tuple[str, ...], tuple[float, Any]] = self.__dict__.setdefault(
            "_limits_view", {})
        hit = cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]  # type: ignore[no-any-return]
        with self.read() as conn:
            limited = frozenset(conn.execute(
                select(queues.c.name).where(
                    queues.c.name.in_(key),
                    (queues.c.concurrency.is_not(None)) | (queues.c.rate.is_not(None)))
            ).scalars())
            keyed = frozenset(
                q for q in key
                if conn.execute(select(jobs.c.id).where(
                    jobs.c.queue == q, jobs.c.state == PENDING,
                    jobs.c.concurrency_key.is_not(None)).limit(1)).first() is not None)
        view = (limited, keyed)
        with self._limits_lock:
            cache[key] = (now + LIMITS_TTL, view)
        return view

    # -- the limited claim ----------------------------------------------------------------------

    def claim_limited(self, worker_id: str, order: Sequence[str], limited: frozenset[str],
                      keyed: frozenset[str], limit: int, lease_seconds: float) -> list[Any]:
        """pending → running for up to ``limit`` jobs of the queues in ``limited`` or
        ``keyed`` (in the worker's ``order``), within every limit; see the module's
        docstring. Returns the claimed rows (``RETURNING *jobs.c``)."""
        names = [q for q in order if q in limited or q in keyed]
        if not names or limit <= 0:
            return []
        with self.write() as conn:
            # The rows of every queue claimed from (a keyed queue's too, for its paused flag).
            rows = conn.execute(
                select(queues).where(queues.c.name.in_(sorted(names)))
                .order_by(queues.c.name).with_for_update()
            ).all()
            now = conn.execute(select(db_now())).scalar_one()
            running = dict(conn.execute(
                select(jobs.c.queue, func.count()).where(
                    jobs.c.state == RUNNING, jobs.c.queue.in_(sorted(limited)))
                .group_by(jobs.c.queue)).all()) if limited else {}
            queue_rows = {r.name: r for r in rows}
            claimed: list[Any] = []
            for name in names:
                q = queue_rows.get(name)
                if q is not None and q.paused:
                    continue
                budget, tokens = _budget(q, running.get(name, 0), now, limit - len(claimed))
                if budget <= 0:
                    continue
                got = self._claim_from(conn, name, budget, name in keyed, worker_id,
                                       lease_seconds)
                claimed += got
                if tokens is not None and got:  # else the bucket just goes on filling
                    conn.execute(update(queues).where(queues.c.name == name).values(
                        tokens=tokens - len(got), tokens_at=now))
                if len(claimed) >= limit:
                    break
        return claimed

    def _claim_from(self, conn: Connection, queue: str, budget: int, keyed: bool,
                    worker_id: str, lease_seconds: float) -> list[Any]:
        """Up to ``budget`` due jobs of ``queue``, keyed ones within their keys' limits."""
        due = (jobs.c.state == PENDING) & (jobs.c.queue == queue) & (jobs.c.run_at <= db_now())
        if keyed:
            # Leave out, while reading, the keys already at their limit (as of this
            # statement; the count under the key's lock below is what decides), so a long
            # backlog of one busy key does not hide the other keys' jobs behind it. The
            # count reads the partial index of running keyed jobs.
            running = jobs.alias("running_jobs")
            busy = (select(func.count()).select_from(running)
                    .where(running.c.state == RUNNING,
                           running.c.concurrency_key == jobs.c.concurrency_key)
                    .scalar_subquery())
            due = due & (jobs.c.concurrency_key.is_(None)
                         | (busy < jobs.c.concurrency_limit))
        else:
            due = due & jobs.c.concurrency_key.is_(None)
        candidates = conn.execute(
            select(jobs.c.id, jobs.c.concurrency_key, jobs.c.concurrency_limit).where(due)
            .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
            .limit(budget + (KEYED_LOOKAHEAD if keyed else 0))
            .with_for_update(skip_locked=True)
        ).all()
        keys = sorted({c.concurrency_key for c in candidates if c.concurrency_key is not None})
        room: dict[str, int] = {}
        if keys:
            # Each key's lock, without waiting: a key another claim holds is its to fill.
            # Counted after the lock is taken, in a statement of its own (READ COMMITTED),
            # the running jobs include every claim of the key that committed before.
            mine = [k for k in keys
                    if conn.execute(select(key_lock(bindparam("k", k, type_=String()))))
                    .scalar_one()]
            busy_by_key = dict(conn.execute(
                select(jobs.c.concurrency_key, func.count()).where(
                    jobs.c.state == RUNNING, jobs.c.concurrency_key.in_(mine))
                .group_by(jobs.c.concurrency_key)).all()) if mine else {}
            first_limit: dict[str, int] = {}
            for c in candidates:
                if c.concurrency_key is not None:
                    first_limit.setdefault(c.concurrency_key, c.concurrency_limit or 1)
            # A key's limit is that of its first candidate; two jobs of one key in one
            # claim share it.
            room = {k: 0 for k in keys}
            room.update({k: first_limit[k] - busy_by_key.get(k, 0) for k in mine})
        picked = []
        for c in candidates:
            if len(picked) >= budget:
                break
            if c.concurrency_key is not None:
                if room[c.concurrency_key] <= 0:
                    continue
                room[c.concurrency_key] -= 1
            picked.append(c.id)
        if not picked:
            return []
        return list(conn.execute(
            update(jobs).where(jobs.c.id.in_(picked), jobs.c.state == PENDING)
            .values(state=RUNNING, attempts=jobs.c.attempts + 1,
                    worker_id=bindparam("c_worker", worker_id, type_=String()),
                    lease_token=new_token(),
                    lease_expires_at=seconds_from_now(
                        bindparam("c_lease", float(lease_seconds), type_=Float())),
                    started_at=db_now())
            .returning(*jobs.c)
        ).all())


def _budget(q: Any, running: int, now: datetime, free: int) -> tuple[int, float | None]:
    """How many jobs a claim may start in a queue (its row ``q``, None for a queue without
    limits), and the tokens its bucket holds now (None: no rate limit)."""
    budget = free
    if q is None:
        return budget, None
    if q.concurrency is not None:
        budget = min(budget, q.concurrency - running)
    tokens = None
    if q.rate is not None:
        burst = float(q.burst or max(1, math.ceil(q.rate)))
        held = burst if q.tokens is None else float(q.tokens)
        since = 0.0 if q.tokens_at is None else max((now - q.tokens_at).total_seconds(), 0.0)
        tokens = min(burst, held + since * float(q.rate))
        budget = min(budget, math.floor(tokens + 1e-9))
    return budget, tokens

