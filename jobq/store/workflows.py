"""Workflows: jobs that wait for other jobs, and what a job's end does to its dependents.

A job enqueued with parents (``depends_on``; in a batch also ``depends_on_items``, earlier
items by index) gets one ``jobq_dependencies`` row per parent and starts ``waiting`` with
``parents_left`` = its parents not done yet, or ``pending`` when all are done already, or
``cancelled`` when one failed or was cancelled (unless ``on_parent_failure`` is "run").

A job whose end must be acted on (it has dependents, or a ``callback_url``) has ``on_final``
set. Its end is then written together with ``ended()`` in one transaction, so that a crash
between the two cannot leave a dependent waiting for ever:

- a parent ``done``: each waiting child's ``parents_left`` drops, and the one that reaches 0
  becomes ``pending`` (due at its ``run_at``; its queue is woken);
- a parent ``failed`` or ``cancelled``: each waiting child is cancelled with the reason, and
  its own dependents after it, transitively; a child with ``on_parent_failure="run"`` counts
  the parent as finished instead, like a done one;
- a ``callback_url``: a job of the webhook task is enqueued in the same transaction, which
  delivers the end with retries (``jobq.webhooks``).

Races. Every change to a child is one guarded UPDATE (``state = 'waiting'``), which takes its
row lock, so two parents ending at once decrement it one after the other. A child enqueued
while its parent runs locks the parent row (SELECT … FOR UPDATE) before reading its state and
setting ``on_final``; the batch completion's UPDATE, which leaves out rows with ``on_final``
set, then either ran first (the child sees the parent done) or waits for that lock and, with
the row as it is now, leaves it out: the job is completed through ``ended()`` instead. On
SQLite the write lock orders all of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, and_, case, func, insert, or_, select, update
from sqlalchemy.sql import literal

from jobq.errors import InvalidJob, JobNotFound
from jobq.store.base import StoreBase, translate
from jobq.store.exprs import db_now, seconds_from_now
from jobq.store.rows import job_of
from jobq.store.tables import KEYED, dependencies, jobs
from jobq.types import EnqueueResult, JobState, NewJob, Parent

PENDING, RUNNING, WAITING = (JobState.PENDING.value, JobState.RUNNING.value,
                             JobState.WAITING.value)
DONE, FAILED, CANCELLED = JobState.DONE.value, JobState.FAILED.value, JobState.CANCELLED.value
OPEN = (PENDING, RUNNING, WAITING)

#: Most jobs one ``GET /workflows/{id}`` returns.
MAX_GRAPH = 10_000


def needs_graph_path(news: Sequence[NewJob]) -> bool:
    """A batch with parents or callbacks, which ``enqueue_graph`` writes."""
    return any(n.depends_on or n.depends_on_items or n.callback_url for n in news)


def enqueue_graph(store: Any, conn: Connection, news: Sequence[NewJob],
                  made: list[int] | None) -> list[EnqueueResult]:
    """``enqueue_many`` for a batch with parents or callbacks, item by item in ``conn``'s
    transaction; each item's parents are locked and read first (see the module's docstring).
    An item with an idempotency key that a job of its queue holds gets that job, as in
    ``enqueue_many``, and items that name it by index depend on that job."""
    from jobq.store.enqueue import _same_request, _values  # the enqueue's own rules

    results: list[EnqueueResult] = []
    ids: list[int] = []
    woken: set[str] = set()
    for i, new in enumerate(news):
        if new.unique_key is not None and (new.depends_on or new.depends_on_items):
            raise _at(InvalidJob("unique_key", "a job with depends_on cannot have a "
                                 "unique_key"), i)
        late = [k for k in new.depends_on_items if k >= i]
        if late:
            raise _at(InvalidJob("depends_on_items", f"item {late[0]} is not an earlier item "
                                 "of this batch"), i)
        parents = list(dict.fromkeys([*new.depends_on, *(ids[k] for k in new.depends_on_items)]))
        state, left, reason, by = _birth(conn, new, parents, i)
        values = {**_values(new, True), "unique_key": None, "unique_for": None}
        at, delay = values.pop("at"), values.pop("delay")
        stmt = (
            store.dialect.insert(jobs)
            .values(**values, state=state, attempts=0,
                    run_at=func.coalesce(literal(at, jobs.c.run_at.type),
                                         seconds_from_now(delay)),
                    created_at=db_now(), parents_left=left,
                    on_final=True if new.callback_url else None,
                    on_parent_failure=new.on_parent_failure,
                    callback_url=new.callback_url, last_error=reason, cancelled_by=by,
                    finished_at=db_now() if state == CANCELLED else None)
            .on_conflict_do_nothing(index_elements=[jobs.c.queue, jobs.c.idempotency_key],
                                    index_where=KEYED)
            .returning(*jobs.c)
        )
        row = conn.execute(stmt).first()
        if row is None:  # the idempotency key's job
            held = conn.execute(select(jobs).where(
                jobs.c.queue == new.queue,
                jobs.c.idempotency_key == new.idempotency_key)).first()
            if held is None or not _same_request(job_of(held), new):
                from jobq.errors import IdempotencyConflict

                raise IdempotencyConflict(new.idempotency_key or "", held.id if held else 0,
                                          index=i)
            ids.append(held.id)
            results.append(EnqueueResult(job_of(held), created=False))
            continue
        if made is not None:
            made.append(row.id)
        ids.append(row.id)
        if parents:
            conn.execute(insert(dependencies),
                         [{"child_id": row.id, "parent_id": p} for p in parents])
            conn.execute(update(jobs).where(jobs.c.id.in_(parents), jobs.c.state.in_(OPEN),
                                            jobs.c.on_final.is_(None))
                         .values(on_final=True))
        if state == PENDING:
            woken.add(new.queue)
        elif state == CANCELLED and new.callback_url:
            ended(store, conn, [row.id])
        results.append(EnqueueResult(job_of(row), created=True))
    store.dialect.wake(conn, woken)
    return results


def _birth(conn: Connection, new: NewJob, parents: list[int],
           index: int) -> tuple[str, int | None, str | None, int | None]:
    """A new job's state, parents_left, last_error and cancelled_by, from its parents as
    they are now (locked: see the module's docstring)."""
    if not parents:
        return PENDING, None, None, None
    found = {r.id: r.state for r in conn.execute(
        select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(parents))
        .order_by(jobs.c.id).with_for_update())}
    missing = [p for p in parents if p not in found]
    if missing:
        raise _at(InvalidJob("depends_on", f"job {missing[0]} does not exist"), index)
    ended_badly = [p for p in parents if found[p] in (FAILED, CANCELLED)]
    if ended_badly and new.on_parent_failure != "run":
        p = ended_badly[0]
        return CANCELLED, 0, f"cancelled: its parent job {p} is {found[p]}", p
    left = sum(1 for p in parents if found[p] in OPEN)
    return (WAITING if left else PENDING), left, None, None


def _at(exc: Any, index: int) -> Any:
    exc.index = index
    return exc


def ended(store: Any, conn: Connection, ids: Iterable[int]) -> None:
    """Act on the end of the jobs ``ids`` (just made final in ``conn``'s transaction, by
    ``store``): their dependents and callbacks, transitively for the dependents this
    cancels."""
    dialect = store.dialect
    frontier = sorted(set(ids))
    woken: set[str] = set()
    while frontier:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.state, jobs.c.queue, jobs.c.task_type, jobs.c.result,
                   jobs.c.last_error, jobs.c.finished_at, jobs.c.callback_url)
            .where(jobs.c.id.in_(frontier), jobs.c.on_final.is_not(None))
        ).all()
        frontier = []
        for r in rows:
            if r.callback_url:
                _enqueue_webhook(store, conn, r)
        states = {r.id: r.state for r in rows}
        if not states:
            break
        edges = conn.execute(
            select(dependencies.c.child_id, dependencies.c.parent_id, jobs.c.on_parent_failure)
            .join(jobs, jobs.c.id == dependencies.c.child_id)
            .where(dependencies.c.parent_id.in_(list(states)), jobs.c.state == WAITING)
            .order_by(dependencies.c.child_id)
        ).all()
        by_child: dict[int, list[Any]] = {}
        for e in edges:
            by_child.setdefault(e.child_id, []).append(e)
        for child, es in by_child.items():
            bad = [e.parent_id for e in es if states[e.parent_id] != DONE]
            if bad and es[0].on_parent_failure != "run":
                p = bad[0]
                cancelled = conn.execute(
                    update(jobs).where(jobs.c.id == child, jobs.c.state == WAITING)
                    .values(state=CANCELLED, finished_at=db_now(), cancelled_by=p,
                            last_error=f"cancelled: its parent job {p} is {states[p]}")
                    .returning(jobs.c.id)
                ).first()
                if cancelled is not None:
                    frontier.append(child)
                continue
            row = conn.execute(
                update(jobs).where(jobs.c.id == child, jobs.c.state == WAITING)
                .values(parents_left=jobs.c.parents_left - len(es),
                        state=case((jobs.c.parents_left - len(es) <= 0, PENDING),
                                   else_=WAITING))
                .returning(jobs.c.state, jobs.c.queue)
            ).first()
            if row is not None and row.state == PENDING:
                woken.add(row.queue)
        dialect.finished(conn, frontier)
    dialect.wake(conn, woken)


def _enqueue_webhook(store: Any, conn: Connection, r: Any) -> None:
    """The delivery of job ``r``'s end to its callback_url: a job of the webhook task in its
    queue (``jobq.webhooks``), enqueued in ``conn``'s transaction."""
    from jobq.settings import load_settings
    from jobq.webhooks import webhook_job

    new = webhook_job(
        url=r.callback_url, job_id=r.id, state=r.state, task_type=r.task_type,
        queue=r.queue, result=r.result, last_error=r.last_error,
        finished_at=r.finished_at or datetime.now(timezone.utc),
        settings=store.settings or load_settings())
    store.enqueue_many([new], conn=conn)


def _open_parents() -> Any:
    """The number of a row's parents not done (a correlated subquery)."""
    return (
        select(func.count()).select_from(dependencies)
        .join(_parent, _parent.c.id == dependencies.c.parent_id)
        .where(dependencies.c.child_id == jobs.c.id, _parent.c.state != DONE)
        .scalar_subquery()
    )


def retried_values() -> dict[str, Any]:
    """A manual retry's state: pending, or waiting while a parent is not done (a failed
    parent too: it must be retried and done first)."""
    return {"state": case((and_(jobs.c.parents_left.is_not(None), _open_parents() > 0),
                           WAITING), else_=PENDING),
            "parents_left": case((jobs.c.parents_left.is_(None), None),
                                 else_=_open_parents())}


def revive(conn: Connection, job_id: int) -> None:
    """A manual retry of ``job_id``: the dependents its end cancelled wait again (and theirs,
    transitively), each for its parents not done."""
    frontier = [job_id]
    seen = {job_id}
    while frontier:
        kids = conn.execute(
            select(jobs.c.id).where(jobs.c.cancelled_by.in_(frontier),
                                    jobs.c.state == CANCELLED)
        ).scalars().all()
        kids = [k for k in kids if k not in seen]
        if not kids:
            return
        seen.update(kids)
        conn.execute(
            update(jobs).where(jobs.c.id.in_(kids), jobs.c.state == CANCELLED)
            .values(state=WAITING, parents_left=_open_parents(), cancelled_by=None,
                    finished_at=None, last_error=None, attempts=0)
        )
        # The parents they wait for again must act on their ends.
        conn.execute(
            update(jobs).where(jobs.c.id.in_(
                select(dependencies.c.parent_id).where(dependencies.c.child_id.in_(kids))))
            .values(on_final=True))
        frontier = kids


_parent = jobs.alias("parent")


def relatives(conn: Connection, job_id: int) -> tuple[list[int], list[int]]:
    """A job's parents and children, by id."""
    parents = conn.execute(select(dependencies.c.parent_id).where(
        dependencies.c.child_id == job_id).order_by(dependencies.c.parent_id)).scalars().all()
    children = conn.execute(select(dependencies.c.child_id).where(
        dependencies.c.parent_id == job_id).order_by(dependencies.c.child_id)).scalars().all()
    return list(parents), list(children)


def parents_of(conn: Connection, job_id: int) -> list[Any]:
    """A job's parents' rows (id, task_type, state, result, last_error), by id."""
    return conn.execute(
        select(jobs.c.id, jobs.c.task_type, jobs.c.state, jobs.c.result, jobs.c.last_error)
        .join(dependencies, dependencies.c.parent_id == jobs.c.id)
        .where(dependencies.c.child_id == job_id).order_by(jobs.c.id)
    ).all()


def graph(conn: Connection, job_id: int) -> tuple[list[Any], list[tuple[int, int]]]:
    """The jobs connected to ``job_id`` by dependencies, either way, and their edges
    (parent, child); at most MAX_GRAPH jobs."""
    seen = {job_id}
    frontier = [job_id]
    edges: set[tuple[int, int]] = set()
    while frontier and len(seen) < MAX_GRAPH:
        found = conn.execute(
            select(dependencies.c.parent_id, dependencies.c.child_id).where(or_(
                dependencies.c.child_id.in_(frontier), dependencies.c.parent_id.in_(frontier)))
        ).all()
        frontier = []
        for parent, child in found:
            edges.add((parent, child))
            for j in (parent, child):
                if j not in seen and len(seen) < MAX_GRAPH:
                    seen.add(j)
                    frontier.append(j)
    nodes: list[Any] = []
    ordered = sorted(seen)
    for start in range(0, len(ordered), 500):
        nodes += conn.execute(
            select(jobs.c.id, jobs.c.task_type, jobs.c.queue, jobs.c.state, jobs.c.attempts,
                   jobs.c.last_error, jobs.c.finished_at)
            .where(jobs.c.id.in_(ordered[start:start + 500])).order_by(jobs.c.id)).all()
    kept = {n.id for n in nodes}
    return nodes, sorted(e for e in edges if e[0] in kept and e[1] in kept)



class WorkflowReads(StoreBase):
    """What the API and the worker read of workflows."""

    @translate
    def relatives(self, job_id: int) -> tuple[list[int], list[int]]:
        """The ids of a job's parents and of its children."""
        with self.read() as conn:
            return relatives(conn, job_id)

    @translate
    def parents(self, job_id: int) -> list[Parent]:
        """A job's parents as its handler sees them (``ctx.parents``), by id."""
        with self.read() as conn:
            return [Parent(r.id, r.task_type, JobState(r.state), r.result, r.last_error)
                    for r in parents_of(conn, job_id)]

    @translate
    def workflow(self, job_id: int) -> tuple[list[Any], list[tuple[int, int]]]:
        """The graph ``job_id`` belongs to: its jobs (id, task_type, queue, state, attempts,
        last_error, finished_at) and edges (parent, child); JobNotFound for no such job."""
        with self.read() as conn:
            if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is None:
                raise JobNotFound(job_id)
            return graph(conn, job_id)
