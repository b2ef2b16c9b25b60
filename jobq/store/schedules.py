"""Periodic jobs: the declared schedules, and each tick's job enqueued exactly once.

A schedule's row says where it stands (``next_run_at``: its first tick not yet handled). A
scheduler pass locks the due rows of the schedules its worker declares (PostgreSQL: FOR UPDATE
SKIP LOCKED, so concurrent passes of other workers take other rows or none; SQLite: its single
writer), enqueues the ticks' jobs and moves ``next_run_at`` on, in one transaction. Each job's
idempotency key is the tick's identity (``schedule:<name>:<tick>``), unique in its queue, so
even a pass that somehow handled a tick again (its row reset by a change of the schedule)
enqueues nothing twice: ON CONFLICT DO NOTHING.

Which definition runs: a worker writes its own at start (``declare_schedules``), over what the
row held, and then runs a schedule only while the row still holds its definition. So while
two versions of a schedule run at once (a rolling deploy), the one of the worker that started
last runs, and the others stand aside; a schedule that no code declares any more is run by
no one (its row stays, shown stale, until ``prune_schedules``).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select, update

from jobq.schedules import MAX_TICKS_PER_PASS, Fired, Pass, Schedule, ScheduleState
from jobq.store.base import StoreBase, translate
from jobq.store.enqueue import _values
from jobq.store.exprs import db_now
from jobq.store.tables import jobs, schedules


class Schedules(StoreBase):
    @functools.cached_property
    def _tick_stmt(self) -> Any:
        return self.dialect.enqueue_statement()  # the jobs' INSERT … ON CONFLICT DO NOTHING

    @translate
    def declare_schedules(self, specs: Sequence[Schedule]) -> dict[str, str]:
        """Write these definitions over what the database holds (a worker's start): a new
        schedule's first tick is its next one; a changed one keeps its place unless its
        timing (expression, zone) changed, when it starts afresh from now. Returns each
        name's change: ``new``, ``changed``, ``retimed`` or ``same``."""
        if not specs:
            return {}
        changes: dict[str, str] = {}
        with self.write() as conn:
            now = _now(conn)
            held = {r.name: r for r in conn.execute(
                select(schedules).where(schedules.c.name.in_([s.name for s in specs]))
                .order_by(schedules.c.name).with_for_update())}
            for spec in specs:
                row = held.get(spec.name)
                if row is None:
                    self._insert_missing(conn, spec, now)
                    changes[spec.name] = "new"
                    continue
                values: dict[str, Any] = {"declared_at": now}
                change = "same"
                if row.definition != spec.definition:
                    values.update(_definition(spec))
                    change = "changed"
                    if (row.expression, row.tz) != spec.timing:
                        values["next_run_at"] = spec.next_after(now)
                        change = "retimed"
                conn.execute(update(schedules).where(schedules.c.name == spec.name)
                             .values(**values))
                changes[spec.name] = change
        return changes

    @translate
    def touch_schedules(self, specs: Sequence[Schedule]) -> None:
        """Say these schedules are still declared (``declared_at``) where the database holds
        them as given; put back any whose row is gone (never over another definition)."""
        if not specs:
            return
        with self.write() as conn:
            now = _now(conn)
            for spec in specs:
                touched = conn.execute(
                    update(schedules)
                    .where(schedules.c.name == spec.name,
                           schedules.c.definition == spec.definition)
                    .values(declared_at=now)
                ).rowcount
                if not touched:
                    self._insert_missing(conn, spec, now)

    def _insert_missing(self, conn: Connection, spec: Schedule, now: datetime) -> None:
        conn.execute(
            self.dialect.insert(schedules)
            .values(name=spec.name, **_definition(spec), next_run_at=spec.next_after(now),
                    created_at=now, declared_at=now)
            .on_conflict_do_nothing(index_elements=[schedules.c.name])
        )

    @translate
    def run_schedules(self, specs: Sequence[Schedule]) -> Pass:
        """Enqueue the due ticks of these schedules (those the database holds as given), each
        exactly once however many workers call this at the same time, and move each one's
        ``next_run_at`` on, in one transaction; see ``Schedule.due`` for which ticks."""
        mine = {s.name: s for s in specs}
        if not mine:
            return Pass([], [], None, _clock(self))
        with self.read() as conn:  # nothing due (the common case): no write at all
            now, earliest = _now(conn), _earliest(conn, mine)
        if earliest is None or earliest > now:
            return Pass([], [], earliest, now)
        fired: list[Fired] = []
        missed: list[tuple[str, datetime]] = []
        more = False
        with self.write() as conn:
            now = _now(conn)
            due = conn.execute(
                select(schedules)
                .where(schedules.c.name.in_(sorted(mine)), schedules.c.next_run_at <= now)
                .order_by(schedules.c.name)
                .with_for_update(skip_locked=True)
            ).all()
            for row in due:
                spec = mine[row.name]
                if row.definition != spec.definition:
                    continue  # another worker's definition runs it now
                ticks, skipped = spec.due(row.next_run_at, now)
                if skipped:
                    missed.append((spec.name, row.next_run_at))
                made = self._enqueue_ticks(conn, spec, ticks)
                fired += made
                capped = len(ticks) == MAX_TICKS_PER_PASS
                more = more or capped
                last = made[-1] if made else None
                conn.execute(
                    update(schedules).where(schedules.c.name == spec.name).values(
                        next_run_at=spec.next_after(ticks[-1] if capped else now),
                        **({"last_run_at": last.tick, "last_job_id": last.job_id}
                           if last is not None else {}),
                    )
                )
            earliest = _earliest(conn, mine)
        return Pass(fired, missed, earliest, now, more)

    def _enqueue_ticks(
        self, conn: Connection, spec: Schedule, ticks: Sequence[datetime]
    ) -> list[Fired]:
        """The ticks' jobs, inserted in one statement; a tick whose key is taken already
        (it was enqueued before) is not inserted again."""
        if not ticks:
            return []
        news = [spec.new_job(t) for t in ticks]
        # run_at is the tick: the job's time is when it was due, and late ticks go first.
        values = [{**_values(n), "at": t} for n, t in zip(news, ticks)]
        rows = conn.execute(self._tick_stmt, self.dialect.enqueue_params(values, self.engine))
        made = {r.idempotency_key: r.id for r in rows}
        out = [Fired(spec.name, t, made.get(n.idempotency_key), n.idempotency_key in made)
               for n, t in zip(news, ticks)]
        if not out[-1].created:  # the last tick's job existed: name it all the same
            out[-1] = Fired(spec.name, ticks[-1], conn.execute(
                select(jobs.c.id).where(jobs.c.queue == spec.queue,
                                        jobs.c.idempotency_key == news[-1].idempotency_key)
            ).scalar(), False)
        return out

    @translate
    def list_schedules(self, *, queues: Collection[str] | None = None) -> list[ScheduleState]:
        """Every schedule the database holds, by name; with ``queues``, those of them only."""
        stmt = select(schedules).order_by(schedules.c.name)
        if queues is not None:
            stmt = stmt.where(schedules.c.queue.in_(sorted(queues)))
        with self.read() as conn:
            return [ScheduleState(
                name=r.name, task_type=r.task_type, queue=r.queue, expression=r.expression,
                tz=r.tz, payload=r.payload, catch_up=r.catch_up, next_run_at=r.next_run_at,
                last_run_at=r.last_run_at, last_job_id=r.last_job_id, created_at=r.created_at,
                declared_at=r.declared_at,
            ) for r in conn.execute(stmt)]

    @translate
    def prune_schedules(self, undeclared_seconds: float) -> int:
        """Forget schedules that no worker has declared for ``undeclared_seconds``: removed
        from the code (a running worker declares its own about once a minute)."""
        with self.write() as conn:
            cutoff = _now(conn) - timedelta(seconds=undeclared_seconds)
            return conn.execute(
                delete(schedules).where(schedules.c.declared_at < cutoff)).rowcount


def _definition(spec: Schedule) -> dict[str, Any]:
    return {
        "task_type": spec.task_type, "queue": spec.queue, "expression": spec.expression,
        "tz": spec.tz, "payload": spec.payload, "catch_up": spec.catch_up,
        "grace_seconds": spec.grace.total_seconds(), "max_attempts": spec.max_attempts,
        "definition": spec.definition,
    }


def _now(conn: Connection) -> datetime:
    """The database's clock, once per transaction: every comparison of it uses this value."""
    now: datetime = conn.execute(select(db_now())).scalar_one()
    return now


def _clock(db: StoreBase) -> datetime:
    with db.read() as conn:
        return _now(conn)


def _earliest(conn: Connection, mine: dict[str, Schedule]) -> datetime | None:
    """The earliest ``next_run_at`` of the schedules held as ``mine`` defines them."""
    rows = conn.execute(select(schedules.c.name, schedules.c.definition,
                               schedules.c.next_run_at)
                        .where(schedules.c.name.in_(sorted(mine)))).all()
    times = [r.next_run_at for r in rows if r.definition == mine[r.name].definition]
    return min(times) if times else None
