"""Pydantic models at the edge of the HTTP API: what a request may carry, what a response says.

A bad request is a 422 that names the field, never a driver error half-way through an insert:
the request models check the fields' types and ranges, and NewJob, which every job passes
through, whatever no backend could store (NaN and Infinity, NUL characters, lone surrogates)
or should not (absurd nesting, huge payloads); the routes give its refusals the same shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from jobq.errors import InvalidJob
from jobq.jsonvalue import LIMITS, check_json_value, text_problem
from jobq.types import (
    MAX_ATTEMPTS_RANGE,
    MAX_DELAY_SECONDS,
    MAX_META_BYTES,
    MAX_PARENTS,
    MAX_TAGS,
    MAX_URL_CHARS,
    MAX_TIMEOUT_SECONDS,
    NAME_PATTERN,
    PRIORITY_RANGE,
    AttemptOutcome,
    JobState,
    utc_run_at,
)

PRIORITY_MIN, PRIORITY_MAX = PRIORITY_RANGE

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


# -- requests ---------------------------------------------------------------------------------


class _JobSpec(BaseModel):
    """A new job; the fields and rules that both request forms share."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Declared here so that both forms list them first; each form narrows their types.
    task_type: Name | None = None
    payload: Any = None
    queue: Name = Field("default", description="Queue to put the job in.", examples=["default"])
    priority: int = Field(
        0,
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        description="Higher runs first among due jobs of a queue.",
    )
    run_at: datetime | None = Field(
        None,
        description="Earliest start, ISO 8601; a time without offset is UTC. "
        "From 0001-01-02 to 9999-12-30 (UTC). Excludes delay_seconds.",
    )
    delay_seconds: float | None = Field(
        None,
        ge=0,
        le=MAX_DELAY_SECONDS,
        description="Earliest start, in seconds from now (database clock). Excludes run_at.",
    )
    max_attempts: int | None = Field(
        None,
        ge=MAX_ATTEMPTS_RANGE[0],
        le=MAX_ATTEMPTS_RANGE[1],
        description="Attempts before the job fails; default: the task's.",
    )
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="Repeating a request with the same key returns the first job (200) "
        "instead of creating another; a different request with the key is a 409.",
    )
    unique_key: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="While a job of the queue with this key is pending or running (or "
        "finished less than its unique_for seconds ago), answer 200 with that job instead "
        "of creating another, whatever the request; free again once it finished.",
    )
    unique_for: float | None = Field(
        None,
        ge=0,
        le=MAX_DELAY_SECONDS,
        description="Seconds after the job finished during which its unique_key stays "
        "taken. Needs unique_key.",
    )
    concurrency_key: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="At most concurrency_limit jobs with this key run at once across the "
        "cluster (a serial lane, e.g. per account); default: the task's key, if it has one.",
    )
    concurrency_limit: int | None = Field(
        None, ge=1, le=100_000,
        description="How many jobs with its concurrency_key may run at once; default: the "
        "task's, else 1.",
    )
    timeout_seconds: float | None = Field(
        None, gt=0, le=MAX_TIMEOUT_SECONDS,
        description="How long one attempt may run; past it the attempt ends with outcome "
        "timeout and is retried or failed like an error. Default: the task's, else the "
        "worker's JOBQ_TIMEOUT_SECONDS.",
    )

    @field_validator("priority", "max_attempts", "concurrency_limit", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be an integer, not a boolean")
        return value

    @field_validator("run_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            return utc_run_at(value)  # NewJob's own rule, so the two cannot disagree
        except InvalidJob as exc:
            raise ValueError(exc.problem) from None

    @field_validator("idempotency_key", "unique_key", "concurrency_key")
    @classmethod
    def _key_text(cls, value: str | None) -> str | None:
        why = text_problem(value) if value is not None else None
        if why:
            raise ValueError(why)
        return value

    @model_validator(mode="after")
    def _one_start(self) -> _JobSpec:
        if self.run_at is not None and self.delay_seconds is not None:
            raise ValueError("give run_at or delay_seconds, not both")
        return self


class EnqueueRequest(_JobSpec):
    """A new job, as a JSON body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"task_type": "test", "payload": {"hello": "world"}},
                {
                    "task_type": "echo",
                    "payload": [1, 2, 3],
                    "queue": "default",
                    "priority": 10,
                    "delay_seconds": 30,
                    "max_attempts": 5,
                    "idempotency_key": "order-42",
                },
            ]
        }
    )

    task_type: Name = Field(description="Name of a registered task.", examples=["test"])
    payload: Any = Field(
        None,
        description=(
            "Any JSON value, handed to the task. At most "
            f"{LIMITS.max_depth} levels deep, {LIMITS.max_nodes} values in all, "
            f"{LIMITS.max_keys} keys per object, {LIMITS.max_string_chars} characters per "
            f"string or key, integers of at most {LIMITS.max_int_digits} digits; no NaN, "
            "Infinity, NUL characters or lone surrogates."
        ),
    )

    # The payload's own checks (depth, sizes, NaN, NUL, surrogates) are NewJob's, which every
    # job passes through (a 422 naming the payload, in a batch the item too): run here as
    # well, they were a sixth of a batch's time in the API.

    # The body is JSON, so each field must have the JSON type the schema declares: lax
    # validation would take "5" for 5, true for a delay of 1 s, and a number for run_at (read
    # as Unix seconds, so a client sending milliseconds would get a date in the year 55000).
    # The query form, where every value is a string, converts as usual.

    tags: list[Name] | None = Field(
        None, max_length=MAX_TAGS, description=f"At most {MAX_TAGS} names, to find the job "
        "by (`GET /jobs?tag=`).", examples=[["billing", "customer-42"]],
    )
    meta: dict[str, Any] | None = Field(
        None, description=f"A JSON object kept with the job (at most {MAX_META_BYTES} bytes "
        "of JSON): labels for people and tools, not data for the task.",
        examples=[{"requested_by": "ana"}],
    )
    depends_on: list[Annotated[int, Field(ge=1, le=2**63 - 1, strict=True)]] | None = Field(
        None, max_length=MAX_PARENTS, description="Ids of jobs this one waits for (state "
        "`waiting`) until every one is done. When one fails or is cancelled, this job is "
        "cancelled too, unless on_parent_failure is `run`.")
    depends_on_items: list[Annotated[int, Field(ge=0, strict=True)]] | None = Field(
        None, max_length=MAX_PARENTS, description="In `POST /jobs/batch`: indexes of earlier "
        "items of the batch that this one waits for, as for depends_on.")
    on_parent_failure: Literal["cancel", "run"] | None = Field(
        None, description="What a parent's failure or cancellation does to this job: "
        "`cancel` (the default) or `run` (it counts as finished).")
    callback_url: str | None = Field(
        None, min_length=1, max_length=MAX_URL_CHARS, description="An http(s) URL that is "
        "POSTed the job's end (id, state, result or error), signed with HMAC-SHA256 "
        "(`X-Jobq-Signature`), with retries. Private and loopback addresses are refused "
        "unless JOBQ_WEBHOOK_ALLOW_PRIVATE.")

    @field_validator("priority", "max_attempts", "delay_seconds", "unique_for",
                     "concurrency_limit", "timeout_seconds", mode="before")
    @classmethod
    def _json_number(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError("must be a JSON number")
        return value

    @field_validator("run_at", mode="before")
    @classmethod
    def _json_time_string(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be an ISO 8601 string, such as 2030-01-31T12:00:00Z")
        return value


class BatchRequest(BaseModel):
    """Many new jobs, stored all or nothing."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"jobs": [
                {"task_type": "echo", "payload": {"n": 1}},
                {"task_type": "echo", "payload": {"n": 2}, "idempotency_key": "order-43"},
            ]}]
        },
    )

    jobs: list[EnqueueRequest] = Field(
        min_length=1,
        description="The jobs, each as the JSON body of `POST /jobs`; at most "
        "JOBQ_BATCH_MAX_JOBS (default 1000), and the whole body at most 1 MiB.",
    )


class EnqueueQuery(_JobSpec):
    """A new job, as query parameters (``POST /jobs?task_type=test&payload=hello``).

    The query form and the JSON body share one operation, so a generated client's submit
    takes both; a default declared for a query parameter is one such a client sends on every
    call (``openapi-python-client`` does), and a body with ``?queue=default&priority=0`` is
    refused as "both forms". So the defaults here are factories, which pydantic leaves out of
    the schema: the server applies them, the descriptions say them, and no client sends them.
    """

    task_type: Name | None = Field(
        None, description="Name of a registered task (query form).", examples=["test"]
    )
    payload: str | None = Field(
        None, description="The payload, as a string (query form).", examples=["hello"]
    )
    queue: Name = Field(
        default_factory=lambda: "default",
        description="Queue to put the job in; default `default`.",
        examples=["default"],
    )
    priority: int = Field(
        default_factory=int,
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        description="Higher runs first among due jobs of a queue; default 0.",
    )

    @field_validator("payload")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        check_json_value(value)
        return value


# -- responses --------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class AttemptOut(_Out):
    attempt: int = Field(description="1 for the first attempt.")
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: AttemptOutcome
    error: str | None
    traceback: str | None


class JobOut(_Out):
    id: int
    task_type: str
    payload: Any
    queue: str
    priority: int
    state: JobState
    attempts: int = Field(description="Attempts started so far.")
    max_attempts: int
    run_at: datetime = Field(description="Earliest time the job may (next) run.")
    idempotency_key: str | None
    unique_key: str | None
    unique_for: float | None = Field(description="Seconds its unique_key stays taken after it finished.")
    concurrency_key: str | None = Field(None, description="Its serial lane: at most "
                                        "concurrency_limit jobs with this key run at once.")
    concurrency_limit: int | None = None
    worker_id: str | None = Field(description="The worker holding the job while it runs; once done, the worker that ran it.")
    lease_expires_at: datetime | None
    result: Any = Field(description="What the task returned, once done.")
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tags: list[str] = Field(description="Its tags, as given at enqueue.")
    meta: dict[str, Any] = Field(description="Its metadata, as given at enqueue.")
    progress: float | None = Field(
        description="The handler's last progress report, 0 to 1 (`ctx.progress`).")
    progress_message: str | None
    progress_at: datetime | None = Field(description="When it was reported.")
    timeout_seconds: float | None = Field(
        None, description="Its own timeout of an attempt, if it was given one.")
    parents_left: int | None = Field(
        None, description="With depends_on: how many of its parents are not done yet.")
    on_parent_failure: str | None = None
    callback_url: str | None = None


class BatchJobOut(JobOut):
    created: bool = Field(
        description="False when an identical earlier request with the same idempotency_key "
        "(before or in this batch) made this job."
    )


class BatchOut(BaseModel):
    jobs: list[BatchJobOut] = Field(description="One per submitted job, in the same order.")


class JobDetail(JobOut):
    attempt_log: list[AttemptOut] = Field(description="Every attempt, oldest first.")
    parents: list[int] = Field(default_factory=list,
                               description="The jobs it waits (or waited) for.")
    children: list[int] = Field(default_factory=list,
                                description="The jobs that wait (or waited) for it.")


class WorkflowNode(_Out):
    id: int
    task_type: str
    queue: str
    state: JobState
    attempts: int
    last_error: str | None
    finished_at: datetime | None
    parents: list[int] = Field(description="Its parents within the graph.")


class WorkflowOut(BaseModel):
    id: int = Field(description="The job asked for.")
    jobs: list[WorkflowNode] = Field(description="Every job of its graph, by id.")
    states: dict[str, int] = Field(description="How many jobs of the graph are in each state.")
    final: bool = Field(description="Every job of the graph is done, failed or cancelled.")
    truncated: bool = Field(description="The graph has more jobs than one answer holds.")


class BulkRequest(BaseModel):
    """Which jobs a bulk cancel or retry takes: every given field must match."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"state": "failed", "queue": "emails"}, {"task_type": "report"}]})

    state: JobState | None = Field(
        None, description="cancel: pending or running (default both); retry: failed "
        "(default) or cancelled.")
    queue: Name | None = Field(None, description="Only jobs of this queue.")
    task_type: Name | None = Field(None, description="Only jobs of this task.")
    limit: int = Field(1000, ge=1, le=10000, description="Most jobs changed by this request, "
                       "oldest first; `more` says whether others match.")

    @field_validator("limit", mode="before")
    @classmethod
    def _json_integer(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a JSON integer")
        return value


class BulkOut(BaseModel):
    changed: int = Field(description="Jobs cancelled (or retried) by this request.")
    more: bool = Field(description="Jobs that match are left: past the limit, or skipped "
                       "(held by a claim that moment, or a retry refused by a unique key). "
                       "Send the request again for them.")


class JobPage(BaseModel):
    items: list[JobOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class StateCounts(BaseModel):
    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    waiting: int = 0


class WorkerOut(_Out):
    id: str
    host: str
    pid: int
    queues: list[str]
    started_at: datetime
    last_heartbeat_at: datetime


class StatsOut(BaseModel):
    jobs: StateCounts = Field(description="Jobs per state, over all queues.")
    queues: dict[str, StateCounts] = Field(description="Jobs per state, per queue.")
    workers: list[WorkerOut] = Field(description="Workers whose heartbeat is recent.")
    oldest_pending_age_seconds: float | None = Field(
        description="How long the oldest due pending job has waited; null when none waits."
    )
    finished_last_minute: int = Field(description="Jobs that reached a final state recently.")


class ScheduleOut(_Out):
    name: str = Field(description="The schedule's name (by default its task's).")
    task_type: str
    queue: str = Field(description="The queue its jobs go to.")
    expression: str = Field(description="A cron expression, or `every <n>s` for an interval.",
                            examples=["*/5 * * * *", "every 30s"])
    tz: str | None = Field(description="The time zone of the cron expression; null: UTC.")
    payload: Any = Field(description="Every job's payload.")
    catch_up: bool = Field(description="Whether ticks missed while no worker ran are "
                           "enqueued later (else those older than the grace are skipped).")
    next_run_at: datetime = Field(description="Its first tick not yet enqueued.")
    last_run_at: datetime | None = Field(description="The tick of the last job enqueued.")
    last_job_id: int | None = Field(description="That job (it may have been pruned since).")
    created_at: datetime
    declared_at: datetime = Field(
        description="When a worker last declared it (about once a minute while one does): "
        "an old time means no running code declares it any more, and nothing runs it."
    )


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut] = Field(description="By name.")


class QueueOut(_Out):
    name: str
    paused: bool = Field(description="Workers claim nothing from a paused queue; its running "
                         "jobs finish.")
    paused_at: datetime | None = Field(description="When it was paused; null when not paused.")
    jobs: StateCounts = Field(description="Its jobs by state.")
    concurrency: int | None = Field(None, description="At most this many of its jobs run at "
                                    "once across the cluster; null: no limit.")
    rate: float | None = Field(None, description="At most this many of its jobs start per "
                               "second across the cluster; null: no limit.")
    burst: int | None = Field(None, description="Starts allowed at once under the rate (the "
                              "token bucket's size).")


class QueueLimits(BaseModel):
    """A queue's limits across the cluster. Each field given replaces that limit (null
    lifts it); each left out stays as it is. A new rate without a burst gets the default
    burst (the rate, at least 1)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"concurrency": 5}, {"rate": 10, "burst": 20}, {"concurrency": None}]})

    concurrency: int | None = Field(None, ge=1, le=100_000)
    rate: float | None = Field(None, gt=0, le=100_000)
    burst: int | None = Field(None, ge=1, le=100_000)

    @field_validator("concurrency", "burst", mode="before")
    @classmethod
    def _json_integer(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("must be a JSON integer")
        return value

    @field_validator("rate", mode="before")
    @classmethod
    def _json_number(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError("must be a JSON number")
        return value


class QueueList(BaseModel):
    queues: list[QueueOut] = Field(description="Every queue with jobs or ever paused, by name.")


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    database: str = Field(examples=["ok"])


class ValidationProblemItem(BaseModel):
    loc: list[str | int] = Field(description='Where, e.g. ["body", "payload"].')
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem, sent as `application/problem+json`."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the kind of problem.", examples=["about:blank"])
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="The request path.")
    errors: list[ValidationProblemItem] | None = Field(
        None, description="Validation problems, each with its location."
    )
    # The members some problems add (problems.py), declared so that a generated client reads
    # them as typed attributes; any other member is still allowed (``extra``).
    job_id: int | None = Field(
        None, description="The job concerned (job-not-found, invalid-transition, "
        "idempotency-conflict when the job is in one of the key's queues)."
    )
    state: JobState | None = Field(None, description="The job's state (invalid-transition).")
    index: int | None = Field(
        None, description="The item of `POST /jobs/batch` concerned, from 0."
    )
    known_task_types: list[str] | None = Field(
        None, description="The task types this server knows (unknown-task)."
    )
    required_scope: str | None = Field(
        None, description="The scope the API key lacks (forbidden)."
    )
    queue: str | None = Field(None, description="The queue concerned (queue-not-found).")
