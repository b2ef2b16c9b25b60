"""The one API that the HTTP app, the CLI and Python callers use: enqueue, get, list, cancel,
retry, stats, schedules. It applies defaults and checks task names; the store does the rest."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

from jobq import payloads, tracing, webhooks
from jobq.store import workflows
from jobq.coalesce import GroupCommit
from jobq.errors import (
    InvalidJob,
    JobqError,
    QueueNotFound,
)
from jobq.keys import ApiKey, NewKey, hash_secret, new_token, prefix_of
from jobq.registry import TaskRegistry, load_registry
from jobq.schedules import ScheduleState
from jobq.settings import Settings
from jobq.store import SqlStore, open_store
from jobq.store.borrowed import their_connection
from jobq.store.operator import BulkResult, JobFilter
from jobq.waits import MAX_WAIT_SECONDS, Waits
from jobq.types import (
    CONCURRENCY_RANGE,
    NAME_PATTERN,
    EnqueueResult,
    Job,
    JobState,
    NewJob,
    Page,
    QueueInfo,
    Stats,
)

_QUEUE_NAME = re.compile(NAME_PATTERN)

#: Most job starts per second a queue's rate limit may allow.
MAX_RATE = 100_000.0


def _whole(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJob(name, f"must be an integer from {low} to {high}")


def _ints(name: str, given: Any) -> tuple[int, ...]:
    """A list of ids or indexes as NewJob takes it (it checks the values)."""
    if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)):
        raise InvalidJob(name, "must be a list of integers")
    return tuple(given)


def _task_key(key: Any, payload: Any) -> str:
    """A job's concurrency key from its task's (a function of the payload, or a string)."""
    if isinstance(key, str):
        return key
    try:
        value = key(payload)
    except Exception as exc:  # noqa: BLE001 - the payload lacks what the key reads
        raise InvalidJob("concurrency_key", f"the task's concurrency_key cannot read this "
                         f"payload: {type(exc).__name__}: {exc}") from None
    if value is None:
        raise InvalidJob("concurrency_key", "the task's concurrency_key gave None")
    return str(value)


#: Jobs one bulk cancel or retry takes by default, and at most.
BULK_DEFAULT, BULK_MOST = 1000, 10000
PENDING, RUNNING = JobState.PENDING.value, JobState.RUNNING.value
FAILED, CANCELLED = JobState.FAILED.value, JobState.CANCELLED.value


class JobService:
    def __init__(self, store: SqlStore, registry: TaskRegistry, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        # Concurrent enqueues, single or batched (the API's requests), share transactions
        # written by one thread; see jobq/coalesce.py.
        self._group = GroupCommit(store.enqueue_many, store.enqueue)
        self._waits = Waits(
            lambda heard: store.listen_final(heard, settings),
            max_waiters=settings.max_waiters, recheck=settings.wait_recheck_seconds,
            poll=min(settings.poll_interval_seconds, settings.wait_recheck_seconds))

    @classmethod
    def from_settings(cls, settings: Settings) -> JobService:
        registry = load_registry(settings.tasks)
        return cls(open_store(settings), registry, settings)

    def close(self) -> None:
        """Write the enqueues in flight, then let go of the database connections."""
        self._group.close()
        self._waits.close()
        self.store.dispose()

    def __enter__(self) -> JobService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def enqueue(
        self,
        task_type: str,
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay_seconds: float | None = None,
        idempotency_key: str | None = None,
        unique_key: str | None = None,
        unique_for: float | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
        tags: Sequence[str] = (),
        meta: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        trace_context: str | None = None,
        depends_on: Sequence[int] = (),
        on_parent_failure: str | None = None,
        callback_url: str | None = None,
        allowed_queues: Collection[str] | None = None,
        connection: Any = None,
    ) -> EnqueueResult:
        """Persist a job; it is durable when this returns.

        ``max_attempts`` defaults to the task's own, then to JOBQ_MAX_ATTEMPTS.
        Raises UnknownTask for a task_type that no registered handler has.

        Enqueues made at the same time from several threads are committed together (group
        commit), each still returning only once its own job is committed.

        ``unique_key``: while a job of the queue with that key is pending or running (or,
        with ``unique_for`` seconds, finished less than that long ago), return that job
        (``created`` False) instead of making another, whatever its request.

        ``concurrency_key``: at most ``concurrency_limit`` (default: the task's, else 1)
        jobs with that key run at once across the cluster; default: the task's key.
        ``timeout_seconds``: how long one attempt may run (default: the task's, else
        JOBQ_TIMEOUT_SECONDS); past it the attempt ends with outcome ``timeout``.
        ``depends_on``: ids of jobs this one waits for (state ``waiting``) until all are
        done; when one fails or is cancelled this one is cancelled too, unless
        ``on_parent_failure="run"``. ``callback_url``: POSTed the job's end, signed
        (``jobq.webhooks``; needs JOBQ_WEBHOOK_SECRET).
        ``tags`` (at most 10 names) and ``meta`` (a JSON object of at most 4 KiB) are kept
        with the job, for finding it (``list_jobs(tag=)``) and labelling it.

        ``trace_context``: the trace its run continues (``jobq.tracing``); default: the
        current span's, with OpenTelemetry installed.

        ``connection``: the application's own connection to jobq's database (a SQLAlchemy
        Connection or Session, a psycopg or sqlite3 connection, ``jobq.store.borrowed``):
        the job is written in its open transaction and exists once that commits, never if it
        rolls back; nothing is committed here, and no group commit applies.
        """
        new = self._new_job(
            task_type, payload, queue=queue, priority=priority, max_attempts=max_attempts,
            run_at=run_at, delay_seconds=delay_seconds, idempotency_key=idempotency_key,
            unique_key=unique_key, unique_for=unique_for, concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit, tags=tags, meta=meta,
            timeout_seconds=timeout_seconds,
            trace_context=tracing.current_context() if trace_context is None else trace_context,
            depends_on=depends_on, on_parent_failure=on_parent_failure,
            callback_url=callback_url, allowed_queues=allowed_queues,
        )
        if connection is not None:
            try:
                return self._in_their_transaction([new], connection)[0]
            except JobqError as exc:
                exc.index = None  # one job, not an item of a batch
                raise
        if workflows.needs_graph_path([new]):
            # Not grouped: its parents are locked and read in its own transaction, and an
            # error about them is its own.
            return self.store.enqueue(new)
        return self._group.enqueue(new)

    async def enqueue_async(
        self,
        task_type: str,
        payload: Any = None,
        *,
        allowed_queues: Collection[str] | None = None,
        **options: Any,
    ) -> EnqueueResult:
        """``enqueue`` (the same arguments, checks and group commit) for an event loop (the
        API's ``POST /jobs``), awaited without holding a thread while the commit runs."""
        if options.get("trace_context") is None:
            options["trace_context"] = tracing.current_context()
        new = self._new_job(task_type, payload, allowed_queues=allowed_queues, **options)
        if workflows.needs_graph_path([new]):
            return await asyncio.to_thread(self.store.enqueue, new)
        result: EnqueueResult = await asyncio.wrap_future(self._group.submit(new))
        return result

    def enqueue_many(
        self,
        specs: Iterable[Mapping[str, Any]],
        *,
        allowed_queues: Collection[str] | None = None,
        trace_context: str | None = None,
        connection: Any = None,
    ) -> list[EnqueueResult]:
        """Persist many jobs in one transaction, all or nothing; durable when this returns.

        Each spec holds ``enqueue``'s arguments by name, e.g. ``{"task_type": "send_email",
        "payload": {"to": "ana"}, "queue": "emails"}``, with the same defaults and checks.
        The results are in the order of ``specs``. An error about one spec (UnknownTask,
        InvalidJob, QueueNotFound, IdempotencyConflict) says which in its ``index`` (from 0),
        and then no job of the batch is stored.

        ``trace_context``: that of the specs that give none; default: the current span's.
        ``connection``: as for ``enqueue``, the whole batch in the application's transaction.
        """
        news = self._new_jobs(specs, allowed_queues, trace_context)
        if connection is not None:
            return self._in_their_transaction(news, connection)
        return self._group.enqueue_many(news)

    def _in_their_transaction(self, news: list[NewJob], connection: Any
                              ) -> list[EnqueueResult]:
        with their_connection(connection, self.store.dialect.name) as conn:
            return self.store.enqueue_many(news, conn=conn)

    async def enqueue_many_async(
        self,
        specs: Iterable[Mapping[str, Any]],
        *,
        allowed_queues: Collection[str] | None = None,
        trace_context: str | None = None,
    ) -> list[EnqueueResult]:
        """``enqueue_many`` for an event loop (the API's ``POST /jobs/batch``), awaited
        without holding a thread while the commit runs."""
        news = self._new_jobs(specs, allowed_queues, trace_context)
        results: list[EnqueueResult] = await asyncio.wrap_future(self._group.submit_many(news))
        return results

    def _new_jobs(
        self, specs: Iterable[Mapping[str, Any]], allowed_queues: Collection[str] | None,
        trace_context: str | None = None,
    ) -> list[NewJob]:
        """The checked jobs of a batch; an error about one spec names it by ``index``. Those
        without a ``trace_context`` get ``trace_context``, default the current span's."""
        traced = tracing.current_context() if trace_context is None else trace_context
        news = []
        for i, spec in enumerate(specs):
            if traced is not None and spec.get("trace_context") is None:
                spec = {**spec, "trace_context": traced}
            try:
                news.append(self._new_job(**spec, allowed_queues=allowed_queues))
            except JobqError as exc:
                exc.index = i
                raise
        return news

    def _new_job(
        self,
        task_type: str,
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay_seconds: float | None = None,
        idempotency_key: str | None = None,
        unique_key: str | None = None,
        unique_for: float | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
        tags: Sequence[str] = (),
        meta: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        trace_context: str | None = None,
        depends_on: Sequence[int] = (),
        depends_on_items: Sequence[int] = (),
        on_parent_failure: str | None = None,
        callback_url: str | None = None,
        allowed_queues: Collection[str] | None = None,
    ) -> NewJob:
        if allowed_queues is not None and queue not in allowed_queues:
            raise QueueNotFound(queue)
        task = self.registry.get(task_type)
        if max_attempts is None:
            max_attempts = task.max_attempts or self.settings.max_attempts
        payload = payloads.checked(task.payload_model, payload)
        if concurrency_key is None and task.concurrency_key is not None:
            concurrency_key = _task_key(task.concurrency_key, payload)
        if concurrency_key is not None and concurrency_limit is None:
            concurrency_limit = task.concurrency_limit or 1
        return NewJob(
            task_type=task_type,
            payload=payload,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=run_at,
            delay_seconds=delay_seconds,
            idempotency_key=idempotency_key,
            unique_key=unique_key,
            unique_for=unique_for,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
            tags=tags,
            meta=None if meta is None else dict(meta) if isinstance(meta, Mapping) else meta,
            timeout_seconds=timeout_seconds,
            trace_context=trace_context,
            depends_on=_ints("depends_on", depends_on),
            depends_on_items=_ints("depends_on_items", depends_on_items),
            on_parent_failure=on_parent_failure,
            callback_url=(None if callback_url is None
                          else webhooks.check_callback(callback_url, self.settings)),
        )

    # ``allowed_queues`` (where taken): the queues the caller may see, from its API key; None
    # means every queue. A job or queue outside them does not exist for the caller
    # (JobNotFound, QueueNotFound). A job never changes queue, so checking before acting
    # leaves no gap.

    def get(self, job_id: int, *, allowed_queues: Collection[str] | None = None) -> Job:
        return self.store.get(job_id, queues=allowed_queues)

    def wait(self, job_id: int, timeout: float = MAX_WAIT_SECONDS, *,
             allowed_queues: Collection[str] | None = None) -> Job:
        """The job once it is final (done, failed, cancelled), or as it is after
        ``timeout`` seconds (0 to 60), whichever comes first; its progress meanwhile is in
        what ``get`` reads. Woken by a notification, not by polling (``jobq.waits``);
        JobNotFound at once for a job that does not exist."""
        return self._waits.wait(job_id, _wait_seconds(timeout),
                                lambda: self.get(job_id, allowed_queues=allowed_queues))

    async def wait_async(self, job_id: int, timeout: float = MAX_WAIT_SECONDS, *,
                         allowed_queues: Collection[str] | None = None) -> Job:
        """``wait`` for an event loop (``GET /jobs/{id}?wait=``): while it waits it holds
        no thread and no database connection; cancelled, it stops waiting at once."""
        return await self._waits.wait_async(
            job_id, _wait_seconds(timeout),
            lambda: self.get(job_id, allowed_queues=allowed_queues))

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task_type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        tag: str | None = None,
        allowed_queues: Collection[str] | None = None,
    ) -> Page:
        """Newest first; ``tag``: only jobs with that tag."""
        if allowed_queues is not None:
            if queue is not None and queue not in allowed_queues:
                raise QueueNotFound(queue)
            if queue is None:
                return self.store.list_jobs(
                    state=state, task_type=task_type, limit=limit, cursor=cursor,
                    queues=sorted(allowed_queues), tag=tag,
                )
        return self.store.list_jobs(
            state=state, queue=queue, task_type=task_type, limit=limit, cursor=cursor, tag=tag
        )

    def relatives(self, job_id: int) -> tuple[list[int], list[int]]:
        """The ids of a job's parents and children (``depends_on``)."""
        return self.store.relatives(job_id)

    def workflow(self, job_id: int, *,
                 allowed_queues: Collection[str] | None = None) -> dict[str, Any]:
        """The graph of jobs that ``job_id`` belongs to, linked by ``depends_on`` either way:
        ``{"id", "jobs": [{id, task_type, queue, state, attempts, last_error, finished_at,
        parents}], "states": {state: n}, "final", "truncated"}``; jobs of queues the caller
        does not see are left out. JobNotFound for a job the caller cannot see."""
        if allowed_queues is not None:
            self._visible(job_id, allowed_queues)
        nodes, edges = self.store.workflow(job_id)
        parents: dict[int, list[int]] = {}
        for parent, child in edges:
            parents.setdefault(child, []).append(parent)
        seen = [n for n in nodes if allowed_queues is None or n.queue in allowed_queues]
        states = {s.value: 0 for s in JobState}
        for n in seen:
            states[n.state] += 1
        return {
            "id": job_id,
            "jobs": [{**n._mapping, "parents": parents.get(n.id, [])} for n in seen],
            "states": states,
            "final": all(JobState(n.state).is_final for n in seen),
            "truncated": len(nodes) >= workflows.MAX_GRAPH,
        }

    def cancel(self, job_id: int, *, allowed_queues: Collection[str] | None = None) -> Job:
        if allowed_queues is not None:
            self._visible(job_id, allowed_queues)
        return self.store.cancel(job_id)

    def retry(self, job_id: int, *, allowed_queues: Collection[str] | None = None) -> Job:
        if allowed_queues is not None:
            self._visible(job_id, allowed_queues)
        return self.store.retry(job_id)

    def cancel_matching(self, *, state: JobState | str | None = None, queue: str | None = None,
                        task_type: str | None = None, limit: int = BULK_DEFAULT,
                        allowed_queues: Collection[str] | None = None) -> BulkResult:
        """``cancel`` every job that matches (``state`` pending or running, default both),
        at most ``limit``, oldest first. At least one filter must be given: cancelling every
        job of every queue is said with ``state``."""
        if state is None and queue is None and task_type is None:
            raise InvalidJob("state", "give state, queue or task_type: a bulk cancel of "
                             "every job needs at least one filter")
        match = self._filter(state, (PENDING, RUNNING), queue, task_type, limit,
                             allowed_queues, "cancel")
        return self.store.cancel_matching(match, limit)

    def retry_matching(self, *, state: JobState | str | None = None, queue: str | None = None,
                       task_type: str | None = None, limit: int = BULK_DEFAULT,
                       allowed_queues: Collection[str] | None = None) -> BulkResult:
        """``retry`` every job that matches (``state`` failed, the default, or cancelled),
        at most ``limit``, oldest first."""
        match = self._filter(state or JobState.FAILED, (FAILED, CANCELLED), queue, task_type,
                             limit, allowed_queues, "retry")
        return self.store.retry_matching(match, limit)

    def count_matching(self, *, states: Sequence[str], queue: str | None = None,
                       task_type: str | None = None,
                       allowed_queues: Collection[str] | None = None) -> int:
        return self.store.count_matching(JobFilter(
            tuple(states), queue, task_type,
            None if allowed_queues is None else tuple(sorted(allowed_queues))))

    def _filter(self, state: JobState | str | None, allowed: tuple[str, ...],
                queue: str | None, task_type: str | None, limit: int,
                allowed_queues: Collection[str] | None, action: str) -> JobFilter:
        if isinstance(limit, bool) or not isinstance(limit, int) or not (
                1 <= limit <= BULK_MOST):
            raise InvalidJob("limit", f"must be an integer from 1 to {BULK_MOST}")
        try:
            states = allowed if state is None else (JobState(state).value,)
        except ValueError:
            raise InvalidJob("state", f"{action} takes {' or '.join(allowed)} jobs") from None
        if not set(states) <= set(allowed):
            raise InvalidJob("state", f"{action} takes {' or '.join(allowed)} jobs")
        if queue is not None and allowed_queues is not None and queue not in allowed_queues:
            raise QueueNotFound(queue)
        return JobFilter(states, queue, task_type,
                         None if allowed_queues is None else tuple(sorted(allowed_queues)))

    def set_queue_limits(self, name: str, *, concurrency: int | None = None,
                         rate: float | None = None, burst: int | None = None,
                         allowed_queues: Collection[str] | None = None) -> QueueInfo:
        """A queue's limits across the cluster (None clears one): at most ``concurrency`` of
        its jobs running at once, at most ``rate`` starts per second in bursts of at most
        ``burst`` (default: the rate, at least 1). InvalidJob names a bad value."""
        name = self._queue(name, allowed_queues)
        if concurrency is not None:
            _whole("concurrency", concurrency, *CONCURRENCY_RANGE)
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not (math.isfinite(rate) and 0 < rate <= MAX_RATE)):
            raise InvalidJob("rate", f"must be a number above 0, at most {MAX_RATE}")
        if burst is not None:
            if rate is None:
                raise InvalidJob("burst", "needs a rate")
            _whole("burst", burst, *CONCURRENCY_RANGE)
        return self.store.set_queue_limits(name, concurrency=concurrency,
                                           rate=None if rate is None else float(rate),
                                           burst=burst)

    def _visible(self, job_id: int, queues: Collection[str]) -> None:
        self.store.get(job_id, with_attempts=False, queues=queues)  # JobNotFound if not

    def stats(self, *, allowed_queues: Collection[str] | None = None) -> Stats:
        # A worker counts as live while its heartbeat is younger than two leases.
        live = 2 * self.settings.lease_seconds
        if allowed_queues is not None:
            return self.store.stats(live_worker_seconds=live, queues=sorted(allowed_queues))
        return self.store.stats(live_worker_seconds=live)

    # -- queues -----------------------------------------------------------------------------

    def pause_queue(self, name: str, *, allowed_queues: Collection[str] | None = None
                    ) -> QueueInfo:
        """Workers stop claiming from ``name`` within a poll interval; running jobs finish."""
        return self.store.pause_queue(self._queue(name, allowed_queues))

    def resume_queue(self, name: str, *, allowed_queues: Collection[str] | None = None
                     ) -> QueueInfo:
        """Workers claim from ``name`` again (on PostgreSQL at once: NOTIFY)."""
        return self.store.resume_queue(self._queue(name, allowed_queues))

    def list_queues(self, *, allowed_queues: Collection[str] | None = None
                    ) -> list[QueueInfo]:
        """Every queue (with jobs, or ever paused), its jobs by state and whether it is
        paused; with ``allowed_queues``, those queues."""
        return self.store.list_queues(only=allowed_queues)

    def queue(self, name: str, *, allowed_queues: Collection[str] | None = None) -> QueueInfo:
        """One queue (zeros and no limits for a queue never used)."""
        return self.store.list_queues(only=[self._queue(name, allowed_queues)])[0]

    @staticmethod
    def _queue(name: str, allowed_queues: Collection[str] | None) -> str:
        if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
            raise InvalidJob("queue", f"must match {NAME_PATTERN}")
        if allowed_queues is not None and name not in allowed_queues:
            raise QueueNotFound(name)
        return name

    def list_schedules(
        self, *, allowed_queues: Collection[str] | None = None
    ) -> list[ScheduleState]:
        """The periodic jobs that workers declared, where each stands; with
        ``allowed_queues``, those whose jobs go to one of them."""
        return self.store.list_schedules(queues=allowed_queues)

    def ping(self) -> datetime:
        return self.store.ping()

    # -- API keys ---------------------------------------------------------------------------

    def create_key(
        self, name: str, queues: Sequence[str], scopes: Sequence[str]
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it with its token, which exists nowhere else afterwards.

        Raises InvalidKeySpec for a bad name, queue or scope.
        """
        new = NewKey(name=name, queues=tuple(queues), scopes=tuple(scopes))
        while True:  # a taken prefix (48 random bits) is drawn again
            token = new_token()
            key = self.store.create_api_key(new, token.prefix, hash_secret(token.secret))
            if key is not None:
                return key, str(token)

    def list_keys(self) -> list[ApiKey]:
        return self.store.list_api_keys()

    def revoke_key(self, prefix_or_token: str) -> ApiKey:
        """Revoke by prefix (a whole token works too). Raises KeyNotFound."""
        return self.store.revoke_api_key(prefix_of(prefix_or_token))

    def find_key(self, prefix: str) -> ApiKey | None:
        return self.store.get_api_key(prefix)

    def keys_configured(self) -> bool:
        """Whether any key is active; with none, the API is open (see jobq/api/auth.py)."""
        return self.store.has_active_api_keys()

    def touch_key(self, key_id: int) -> None:
        self.store.touch_api_key(key_id)


def _wait_seconds(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            0 <= timeout <= MAX_WAIT_SECONDS):
        raise ValueError(f"timeout must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}")
    return float(timeout)
