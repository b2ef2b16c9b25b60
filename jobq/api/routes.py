"""Thin routes over JobService, one router per resource.

The store is synchronous, so a route that reads or writes the database is a plain ``def``:
FastAPI runs it in its threadpool and the event loop never waits on the database. The one
exceptions are ``POST /jobs`` and ``POST /jobs/batch``, the hot paths: they hand their jobs
to the group commit and await the commit without holding a thread
(``JobService.enqueue_async``, ``enqueue_many_async``). Dependencies that never
touch the database are ``async def``, so they cost no trip through the threadpool.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool

from jobq import tracing
from jobq.api.auth import Admin, Enqueuer, Reader
from jobq.api.models import (
    BatchOut,
    BatchRequest,
    BulkOut,
    BulkRequest,
    EnqueueQuery,
    EnqueueRequest,
    Health,
    JobDetail,
    JobOut,
    JobPage,
    QueueLimits,
    QueueList,
    QueueOut,
    ScheduleList,
    ScheduleOut,
    StateCounts,
    StatsOut,
    WorkerOut,
)
from jobq.api.problems import problem_responses
from jobq.errors import InvalidJob, StoreUnavailable, UnknownTask
from jobq.metrics import PROMETHEUS_TEXT, cluster_metrics
from jobq.payloads import InvalidPayload
from jobq.service import JobService
from jobq.settings import NAME_PATTERN
from jobq.types import Job, JobState
from jobq.waits import MAX_WAIT_SECONDS

log = logging.getLogger("jobq.api")

#: Largest id the databases store (BIGINT); larger ids cannot exist.
MAX_JOB_ID = 2**63 - 1


async def get_service(request: Request) -> JobService:
    """The JobService that the app's lifespan put in ``app.state``."""
    service: JobService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise RuntimeError("the jobq app was not started: its lifespan has not run")
    return service


Service = Annotated[JobService, Depends(get_service)]


def only_query_params(*names: str) -> Any:
    """A dependency that refuses query parameters other than ``names``, naming each (422).

    A misspelt filter (``GET /jobs?stat=failed``) would otherwise be ignored, and the answer
    would list every job as if the filter had matched them all.
    """
    known = frozenset(names)

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise RequestValidationError([
                {"type": "extra_forbidden", "loc": ("query", name),
                 "msg": "Extra inputs are not permitted"}
                for name in unknown
            ])

    return Depends(check)


def _plain_digits(value: object) -> object:
    """A path's id as text: digits 0-9 only. Converted as it was, ``/jobs/1_0`` was job 10
    (Python's int() takes underscores), and "+1", " 1" and other scripts' digits were ids."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be written in plain digits (0-9)")
    return value


JobId = Annotated[
    int, BeforeValidator(_plain_digits), Path(ge=1, le=MAX_JOB_ID, description="The job's id.")
]


def _operation_id(route: APIRoute) -> str:
    """The operationId, which names a generated client's function: the route function's name
    (``submit_job``), unique in this API, where FastAPI's default repeats the path and method
    (``submit_job_jobs_post``)."""
    return route.name


jobs = APIRouter(prefix="/jobs", tags=["jobs"], generate_unique_id_function=_operation_id)
monitoring = APIRouter(tags=["monitoring"], generate_unique_id_function=_operation_id)
queues = APIRouter(prefix="/queues", tags=["queues"], generate_unique_id_function=_operation_id)

QueueName = Annotated[
    str, Path(pattern=NAME_PATTERN, min_length=1, max_length=128, description="The queue's name.")
]


@jobs.post(
    "",
    status_code=201,
    summary="Submit a job",
    description=(
        "Give the job either as a JSON body or, as in `POST /jobs?task_type=test&payload=hello`, "
        "as query parameters (the payload is then a string), never both. "
        "Answers 201 with the new job, or 200 with the existing job when an identical request "
        "with the same `idempotency_key` was made before."
    ),
    responses={
        200: {"model": JobOut, "description": "Repeated request: the job it created before."},
        **problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
    },
)
async def submit_job(
    service: Service,
    caller: Enqueuer,
    request: Request,
    response: Response,
    query: Annotated[EnqueueQuery, Query()],
    body: Annotated[EnqueueRequest | None, Body()] = None,  # optional (jobq.api.openapi)
) -> JobOut:
    given_in_query = query.model_fields_set
    if body is not None and given_in_query:
        raise RequestValidationError([{
            "type": "value_error",
            "loc": ("query", sorted(given_in_query)[0]),
            "msg": "give the job as a JSON body or as query parameters, not both",
        }])
    spec: EnqueueRequest | EnqueueQuery
    if body is not None:
        spec = body
    elif query.task_type is not None:
        spec = query
    else:
        raise RequestValidationError([{
            "type": "missing",
            "loc": ("body", "task_type"),
            "msg": "task_type is required, in a JSON body or as a query parameter",
        }])
    assert spec.task_type is not None
    try:
        result = await service.enqueue_async(
            **_spec(spec), allowed_queues=caller.allowed_queues,
            trace_context=tracing.request_context(request.headers))
    except InvalidJob as exc:  # NewJob's checks, which the request model leaves to it
        raise _invalid(exc, "body" if body is not None else "query") from None
    if not result.created:
        response.status_code = 200
    return JobOut.model_validate(result.job)


def _invalid(exc: InvalidJob, *where: str | int) -> RequestValidationError:
    """A job that NewJob refused, as the 422 of a request field (``where``: its place); a
    payload its task's model refused, as a 422 of each field of the payload."""
    if isinstance(exc, InvalidPayload):
        return RequestValidationError([
            {"type": "payload_invalid", "loc": (*where, "payload", *loc), "msg": msg}
            for loc, msg in exc.errors
        ])
    return RequestValidationError([{
        "type": "value_error", "loc": (*where, exc.field), "msg": exc.problem,
    }])


def _spec(spec: EnqueueRequest | EnqueueQuery) -> dict[str, Any]:
    """The arguments of ``JobService.enqueue`` that a request gives."""
    return {
        "task_type": spec.task_type,
        "payload": spec.payload,
        "queue": spec.queue,
        "priority": spec.priority,
        "max_attempts": spec.max_attempts,
        "run_at": spec.run_at,
        "delay_seconds": spec.delay_seconds,
        "idempotency_key": spec.idempotency_key,
        "unique_key": spec.unique_key,
        "unique_for": spec.unique_for,
        "concurrency_key": spec.concurrency_key,
        "concurrency_limit": spec.concurrency_limit,
        "timeout_seconds": spec.timeout_seconds,
        # The JSON body only: the query form has no lists or objects.
        "tags": getattr(spec, "tags", None) or (),
        "meta": getattr(spec, "meta", None),
        "depends_on": getattr(spec, "depends_on", None) or (),
        "depends_on_items": getattr(spec, "depends_on_items", None) or (),
        "on_parent_failure": getattr(spec, "on_parent_failure", None),
        "callback_url": getattr(spec, "callback_url", None),
    }


@jobs.post(
    "/batch",
    status_code=201,
    summary="Submit many jobs",
    description=(
        "Up to JOBQ_BATCH_MAX_JOBS jobs (default 1000), each as the JSON body of `POST /jobs`, "
        "stored in one transaction, all or nothing: any invalid job (422, its `loc` names the "
        "item, as in `body.jobs.3.task_type`), queue outside the API key (404) or "
        "idempotency conflict (409, `index` names the item) stores none. Answers 201 with "
        "the jobs in the order given, each with `created`; 200 when every job existed already "
        "(a repeat with the same idempotency keys)."
    ),
    responses={
        200: {"model": BatchOut, "description": "Repeated request: no job was created."},
        **problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
    },
)
async def submit_jobs(
    service: Service, caller: Enqueuer, request: Request, response: Response, body: BatchRequest
) -> BatchOut:
    most = service.settings.batch_max_jobs
    if len(body.jobs) > most:
        raise RequestValidationError([{
            "type": "too_long",
            "loc": ("body", "jobs"),
            "msg": f"at most {most} jobs per batch (JOBQ_BATCH_MAX_JOBS)",
        }])
    try:
        results = await service.enqueue_many_async(
            [_spec(job) for job in body.jobs], allowed_queues=caller.allowed_queues,
            trace_context=tracing.request_context(request.headers),
        )
    except (UnknownTask, InvalidJob) as exc:
        if exc.index is None:
            raise
        if isinstance(exc, InvalidJob):
            raise _invalid(exc, "body", "jobs", exc.index) from None
        raise RequestValidationError([{
            "type": "unknown_task", "loc": ("body", "jobs", exc.index, "task_type"),
            "msg": str(exc),
        }]) from None
    if not any(r.created for r in results):
        response.status_code = 200
    # One validation of plain dicts (a Job's fields, plus created; the fields JobOut does not
    # show are ignored): half the time of a model per job, built attribute by attribute.
    return BatchOut.model_validate(
        {"jobs": [{**vars(r.job), "created": r.created} for r in results]}
    )


@jobs.get(
    "",
    summary="List jobs",
    description="Newest first, filtered; page on with `cursor` = the previous `next_cursor`.",
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
def list_jobs(
    service: Service,
    caller: Reader,
    _: Annotated[None, only_query_params("state", "queue", "task_type", "limit", "cursor",
                                         "tag")],
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    queue: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only jobs of this queue.")
    ] = None,
    task_type: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only jobs of this task.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    cursor: Annotated[
        str | None,
        Query(min_length=1, max_length=128, description="`next_cursor` of the previous page."),
    ] = None,
    tag: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only jobs with this tag.")
    ] = None,
) -> JobPage:
    page = service.list_jobs(
        state=state, queue=queue, task_type=task_type, limit=limit, cursor=cursor, tag=tag,
        allowed_queues=caller.allowed_queues,
    )
    return JobPage(
        items=[JobOut.model_validate(job) for job in page.items], next_cursor=page.next_cursor
    )


@jobs.get(
    "/{job_id}",
    summary="Get a job",
    description=(
        "The job with every attempt it has made, and its progress. With `wait=S` (seconds, "
        "0 to 60) a long poll: answers as soon as the job is final (done, failed, "
        "cancelled), or after S seconds with the job as it is then. At most "
        "JOBQ_MAX_WAITERS waits at once per server process (then a 429)."
    ),
    response_model=JobDetail,
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
async def get_job(
    service: Service,
    caller: Reader,
    request: Request,
    job_id: JobId,
    _: Annotated[None, only_query_params("wait")],
    wait: Annotated[float | None, Query(
        ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False,
        description="Seconds to wait for the job to become final (long poll).")] = None,
) -> Any:
    queues = caller.allowed_queues
    if not wait:
        job = await run_in_threadpool(service.get, job_id, allowed_queues=queues)
        return await _detail(service, job)
    # The wait holds no thread and no connection; a client that goes away ends it at once.
    waiting = asyncio.ensure_future(service.wait_async(job_id, wait, allowed_queues=queues))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not waiting.done():
            waiting.cancel()
    if not waiting.done() or waiting.cancelled():
        return Response(status_code=499)  # the client is gone: nobody reads this
    return await _detail(service, waiting.result())


async def _detail(service: JobService, job: Job) -> JobDetail:
    """A job with its attempts, parents and children."""
    parents, children = await run_in_threadpool(service.relatives, job.id)
    detail = JobDetail.model_validate(job)
    detail.parents, detail.children = parents, children
    return detail


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away (the request's body, if any, is skipped)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@jobs.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    description=(
        "pending or running → cancelled (a running handler is asked to stop). "
        "Cancelling a cancelled job returns it unchanged; a done or failed job is a 409."
    ),
    responses=problem_responses(401, 403, 404, 409, 422, 429, 503),
)
def cancel_job(service: Service, caller: Admin, job_id: JobId) -> JobOut:
    return JobOut.model_validate(service.cancel(job_id, allowed_queues=caller.allowed_queues))


@jobs.post(
    "/cancel",
    summary="Cancel jobs in bulk",
    description="Every job that matches the filter (at least one field; `state` pending or "
    "running, default both), up to `limit`, oldest first → how many were cancelled, and "
    "whether more match. Admin scope.",
    responses=problem_responses(400, 401, 403, 404, 413, 422, 429, 503),
)
def cancel_jobs(service: Service, caller: Admin, body: BulkRequest) -> BulkOut:
    return _bulk(service.cancel_matching, body, caller)


@jobs.post(
    "/retry",
    summary="Retry jobs in bulk",
    description="Every job that matches the filter (`state` failed, the default, or "
    "cancelled), up to `limit`, oldest first → how many were retried, and whether more "
    "match. A job whose unique key a live job holds is left. Admin scope.",
    responses=problem_responses(400, 401, 403, 404, 413, 422, 429, 503),
)
def retry_jobs(service: Service, caller: Admin, body: BulkRequest) -> BulkOut:
    return _bulk(service.retry_matching, body, caller)


def _bulk(run: Any, body: BulkRequest, caller: Any) -> BulkOut:
    try:
        r = run(state=body.state, queue=body.queue, task_type=body.task_type,
                limit=body.limit, allowed_queues=caller.allowed_queues)
    except InvalidJob as exc:  # the service's rules for the filter
        raise _invalid(exc, "body") from None
    return BulkOut(changed=r.changed, more=r.more)


@jobs.post(
    "/{job_id}/retry",
    summary="Retry a job",
    description="failed or cancelled → pending, with a fresh budget of attempts; else a 409.",
    responses=problem_responses(401, 403, 404, 409, 422, 429, 503),
)
def retry_job(service: Service, caller: Admin, job_id: JobId) -> JobOut:
    return JobOut.model_validate(service.retry(job_id, allowed_queues=caller.allowed_queues))


@monitoring.get(
    "/stats",
    summary="Queue statistics",
    description="Jobs per state overall and per queue, live workers, and throughput.",
    responses=problem_responses(401, 403, 429, 503),
)
def stats(service: Service, caller: Reader) -> StatsOut:
    s = service.stats(allowed_queues=caller.allowed_queues)
    return StatsOut(
        jobs=StateCounts(**s.jobs),
        queues={name: StateCounts(**counts) for name, counts in s.queues.items()},
        workers=[WorkerOut.model_validate(w) for w in s.workers],
        oldest_pending_age_seconds=s.oldest_pending_age_seconds,
        finished_last_minute=s.finished_last_minute,
    )


def _queue_out(q: Any) -> QueueOut:
    return QueueOut(name=q.name, paused=q.paused, paused_at=q.paused_at,
                    jobs=StateCounts(**q.jobs), concurrency=q.concurrency, rate=q.rate,
                    burst=q.burst)


@queues.get(
    "",
    summary="List queues",
    description="Every queue that has jobs or was ever paused, by name: its jobs by state and "
    "whether it is paused. An API key sees its queues (each listed, zeros when empty).",
    responses=problem_responses(401, 403, 422, 429, 503),
)
def list_queues(
    service: Service, caller: Reader, _: Annotated[None, only_query_params()]
) -> QueueList:
    return QueueList(queues=[_queue_out(q) for q in service.list_queues(
        allowed_queues=caller.allowed_queues)])


@queues.patch(
    "/{name}",
    summary="Set a queue's limits",
    description="Limits across the cluster, enforced by the claim: `concurrency` (most of its "
    "jobs running at once), `rate` (most starts per second) and `burst`. A field given "
    "replaces that limit, null lifts it, one left out stays. Admin scope.",
    responses=problem_responses(400, 401, 403, 404, 413, 422, 429, 503),
)
def set_queue_limits(service: Service, caller: Admin, name: QueueName,
                     body: QueueLimits) -> QueueOut:
    current = service.queue(name, allowed_queues=caller.allowed_queues)
    given = body.model_fields_set
    concurrency = body.concurrency if "concurrency" in given else current.concurrency
    rate = body.rate if "rate" in given else current.rate
    # A burst given is checked (it needs a rate); a new rate gets its default burst.
    burst = body.burst if "burst" in given else (
        None if "rate" in given or rate is None else current.burst)
    try:
        q = service.set_queue_limits(name, concurrency=concurrency, rate=rate, burst=burst,
                                     allowed_queues=caller.allowed_queues)
    except InvalidJob as exc:
        raise _invalid(exc, "body") from None
    return _queue_out(q)


@queues.post(
    "/{name}/pause",
    summary="Pause a queue",
    description="Workers stop claiming its jobs within a poll interval; running jobs finish. "
    "A queue without jobs can be paused too. Pausing a paused queue changes nothing.",
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
def pause_queue(service: Service, caller: Admin, name: QueueName) -> QueueOut:
    return _queue_out(service.pause_queue(name, allowed_queues=caller.allowed_queues))


@queues.post(
    "/{name}/resume",
    summary="Resume a queue",
    description="Workers claim its jobs again (on PostgreSQL at once: they are notified).",
    responses=problem_responses(401, 403, 404, 422, 429, 503),
)
def resume_queue(service: Service, caller: Admin, name: QueueName) -> QueueOut:
    return _queue_out(service.resume_queue(name, allowed_queues=caller.allowed_queues))


@monitoring.get(
    "/schedules",
    summary="List periodic jobs",
    description="Every schedule the workers declared, by name: its task, expression, next "
    "tick, and the last tick enqueued with its job. An API key sees those of its queues.",
    responses=problem_responses(401, 403, 422, 429, 503),
)
def list_schedules(
    service: Service, caller: Reader, _: Annotated[None, only_query_params()]
) -> ScheduleList:
    return ScheduleList(schedules=[
        ScheduleOut.model_validate(s)
        for s in service.list_schedules(allowed_queues=caller.allowed_queues)
    ])


@monitoring.get(
    "/metrics",
    summary="Prometheus metrics",
    description="The cluster's gauges, read from the database at each scrape (jobs by queue "
    "and state, paused queues, the oldest due job's wait, live workers, jobs created), in "
    "Prometheus' text format; the same from every API process. Counters and histograms of "
    "what workers do come from the workers themselves (JOBQ_METRICS_PORT). An API key bound "
    "to some queues sees those queues only.",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus text format 0.0.4."},
               **problem_responses(401, 403, 422, 429, 503)},
)
def metrics(service: Service, caller: Reader,
            _: Annotated[None, only_query_params()]) -> PlainTextResponse:
    return PlainTextResponse(cluster_metrics(service, caller.allowed_queues),
                             media_type=PROMETHEUS_TEXT)


@monitoring.get(
    "/healthz",
    summary="Health check",
    description="200 when the API can reach its database; a 503 problem when it cannot.",
    responses=problem_responses(503),
)
def healthz(service: Service) -> Health:
    try:
        service.ping()
    except StoreUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the cause, the database is not usable
        log.warning("health check failed: %s: %s", type(exc).__name__, exc)
        raise StoreUnavailable("health check failed") from exc
    return Health(status="ok", database="ok")
