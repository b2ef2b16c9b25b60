"""Queues: pause and resume (an operator's), and the list of every queue with its counts and
limits (which ``store/limits.py`` sets and enforces).

A queue exists as soon as it has a job; ``jobq_queues`` holds a row only for a queue that was
paused or resumed. The claim (``leases.py``) leaves the jobs of a paused queue alone; jobs
already running finish as usual. Resuming wakes the queue's idle workers at commit (NOTIFY on
PostgreSQL), so they claim at once rather than at their next poll.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Connection, func, select

from jobq.store.base import StoreBase, translate
from jobq.store.exprs import db_now
from jobq.store.tables import jobs, queues
from jobq.types import JobState, QueueInfo


class Queues(StoreBase):
    @translate
    def pause_queue(self, name: str) -> QueueInfo:
        """Stop claims from ``name`` (known or not yet: a queue may be paused before its first
        job). Pausing a paused queue keeps its ``paused_at``."""
        return self._set_paused(name, True)

    @translate
    def resume_queue(self, name: str) -> QueueInfo:
        """Let workers claim from ``name`` again, and wake them."""
        return self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> QueueInfo:
        with self.write() as conn:
            ins = self.dialect.insert(queues).values(
                name=name, paused=paused, paused_at=db_now() if paused else None)
            keep_or_now = func.coalesce(queues.c.paused_at, db_now()) if paused else None
            conn.execute(ins.on_conflict_do_update(
                index_elements=[queues.c.name],
                set_={"paused": paused, "paused_at": keep_or_now}))
            if not paused:
                self.dialect.wake(conn, [name])
            return queue_info(conn, name)

    @translate
    def list_queues(self, *, only: Collection[str] | None = None) -> list[QueueInfo]:
        """Every queue that has jobs or a row in ``jobq_queues``, by name; with ``only``,
        those queues (each listed, with zeros when it has neither)."""
        with self.read() as conn:
            return _listed(conn, None if only is None else sorted(only))


def queue_info(conn: Connection, name: str) -> QueueInfo:
    """One queue as ``list_queues`` shows it."""
    return _listed(conn, [name])[0]


def _listed(conn: Connection, names: list[str] | None) -> list[QueueInfo]:
    counts = select(jobs.c.queue, jobs.c.state, func.count()).group_by(jobs.c.queue,
                                                                       jobs.c.state)
    rows = select(queues)
    if names is not None:
        counts = counts.where(jobs.c.queue.in_(names))
        rows = rows.where(queues.c.name.in_(names))
    per: dict[str, dict[str, int]] = {n: {} for n in names or ()}
    for queue, state, n in conn.execute(counts):
        per.setdefault(queue, {})[state] = n
    flags = {r.name: r for r in conn.execute(rows)}
    for name in flags:
        per.setdefault(name, {})
    return [
        QueueInfo(
            name=name,
            paused=bool(flags[name].paused) if name in flags else False,
            paused_at=flags[name].paused_at if name in flags else None,
            jobs={s.value: by_state.get(s.value, 0) for s in JobState},
            concurrency=flags[name].concurrency if name in flags else None,
            rate=flags[name].rate if name in flags else None,
            burst=flags[name].burst if name in flags else None,
        )
        for name, by_state in sorted(per.items())
    ]
