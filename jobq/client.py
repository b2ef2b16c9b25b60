"""``jobq.Client`` and ``jobq.AsyncClient``: the REST API from Python, for services that may
not touch the database (another host, another team, no database credentials).

They answer with the in-process client's types (``Job``, ``EnqueueResult``, ``Page``) and
raise its errors (``jobq.errors``), rebuilt from the API's problem bodies, so code written
against ``jobq.connect()`` moves to HTTP by changing how the client is made. An API that
cannot be reached, or answers 502/503/504, is ``StoreUnavailable``, like a database that
cannot be reached in process: both mean "try again later".

Each call is described once, as a ``_Call`` (method, path, body, how to read the answer);
the two classes differ only in how they send it (httpx's Client or AsyncClient).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx

from jobq import tracing
from jobq.errors import (
    Forbidden,
    IdempotencyConflict,
    InvalidCursor,
    InvalidJob,
    InvalidKeySpec,
    InvalidTransition,
    JobNotFound,
    JobqError,
    KeyNotFound,
    QueueNotFound,
    RateLimited,
    StoreUnavailable,
    Unauthorized,
    UnknownTask,
)
from jobq.types import Attempt, AttemptOutcome, EnqueueResult, Job, JobState, Page

T = TypeVar("T")

#: The enqueue options a request may carry (``JobService.enqueue``'s, less ``allowed_queues``,
#: which the server takes from the API key).
_OPTIONS = ("queue", "priority", "max_attempts", "run_at", "delay_seconds", "idempotency_key",
            "unique_key", "unique_for", "concurrency_key", "concurrency_limit", "tags",
            "meta", "timeout_seconds", "depends_on", "depends_on_items", "on_parent_failure",
            "callback_url")

#: The longest wait of one ``GET /jobs/{id}?wait=`` (the server's bound): ``wait`` makes as
#: many such long polls as its timeout needs.
_WAIT_CHUNK = 60.0


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    #: The answer, from a response with a status below 400.
    read: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    #: What the request acts on, for the errors that name it (job-not-found, …).
    job_id: int | None = None
    action: str | None = None
    #: Seconds for this request, when not the client's (a long poll).
    timeout: float | None = None
    #: It carries the current span's trace context (``traceparent``): an enqueue.
    traced: bool = False


class _Calls:
    """The calls, built once for both clients; ``_send`` is theirs."""

    def _send(self, call: _Call[Any]) -> Any:
        raise NotImplementedError

    def enqueue(self, task_type: str, payload: Any = None, **options: Any) -> Any:
        """Submit a job (``POST /jobs``): an ``EnqueueResult``, ``created`` False when an
        identical request with the same idempotency key or a live job with the same unique
        key was there. ``options``: queue, priority, max_attempts, run_at, delay_seconds,
        idempotency_key, unique_key, unique_for, concurrency_key, concurrency_limit,
        timeout_seconds, tags, meta."""
        return self._send(_Call("POST", "/jobs", _enqueued, json=_spec(task_type, payload,
                                                                         options), traced=True))

    def enqueue_many(self, specs: Iterable[Mapping[str, Any]]) -> Any:
        """Submit many jobs in one transaction, all or nothing (``POST /jobs/batch``); each
        spec holds ``enqueue``'s arguments by name. An error about one spec says which in
        its ``index``."""
        jobs = [_spec(s["task_type"], s.get("payload"),
                      {k: v for k, v in s.items() if k not in ("task_type", "payload")})
                for s in specs]
        return self._send(_Call("POST", "/jobs/batch", _batch, json={"jobs": jobs},
                                traced=True))

    def get(self, job_id: int) -> Any:
        """The job with every attempt it made (``GET /jobs/{id}``)."""
        return self._send(_Call("GET", f"/jobs/{int(job_id)}", _job, job_id=job_id))

    def list_jobs(self, *, state: JobState | str | None = None, queue: str | None = None,
                  task_type: str | None = None, limit: int = 50,
                  cursor: str | None = None, tag: str | None = None) -> Any:
        """A page of jobs, newest first (``GET /jobs``); page on with ``cursor`` set to the
        previous page's ``next_cursor``; ``tag``: only jobs with that tag."""
        params = {k: str(v) for k, v in (("state", state), ("queue", queue),
                                         ("task_type", task_type), ("cursor", cursor),
                                         ("tag", tag))
                  if v is not None}
        params["limit"] = str(limit)
        return self._send(_Call("GET", "/jobs", _page, params=params))

    def _wait_call(self, job_id: int, seconds: float) -> _Call[Job]:
        """One long poll (``GET /jobs/{id}?wait=``), with time for the answer to come."""
        return _Call("GET", f"/jobs/{int(job_id)}", _job, params={"wait": f"{seconds:.3f}"},
                     job_id=job_id, timeout=seconds + 30.0)

    def cancel(self, job_id: int) -> Any:
        """pending or running → cancelled (``POST /jobs/{id}/cancel``, admin scope)."""
        return self._send(_Call("POST", f"/jobs/{int(job_id)}/cancel", _job,
                                job_id=job_id, action="cancel"))

    def retry(self, job_id: int) -> Any:
        """failed or cancelled → pending (``POST /jobs/{id}/retry``, admin scope)."""
        return self._send(_Call("POST", f"/jobs/{int(job_id)}/retry", _job,
                                job_id=job_id, action="retry"))


class Client(_Calls):
    """The REST API of a jobq server, from synchronous code. Thread-safe; close it when
    done (``with jobq.Client(url, token=...) as q:``).

    ``token``: an API key (``jobq keys create``), sent as ``Authorization: Bearer``;
    ``timeout``: seconds for each request; ``http``: an ``httpx.Client`` of your own
    (proxies, TLS, transports), used instead of one made here and not closed by ``close``.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0,
                 http: httpx.Client | None = None) -> None:
        self._own = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._headers = _headers(token)

    def _send(self, call: _Call[T]) -> T:
        try:
            resp = self._http.request(call.method, call.path, json=call.json,
                                      params=call.params or None,
                                      headers=_with_trace(self._headers, call),
                                      timeout=_timeout(call))
        except httpx.TransportError as exc:
            raise _unreachable(self._http.base_url, exc) from exc
        return _answer(call, resp)

    def wait(self, job_id: int, timeout: float = 60.0) -> Job:
        """The job once it is final (done, failed or cancelled), or as it is after
        ``timeout`` seconds (check ``job.state``): long polls of ``GET /jobs/{id}?wait=``,
        of at most 60 s each, which the server answers as soon as the job is final."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                job = self._send(self._wait_call(job_id, min(left, _WAIT_CHUNK)))
            except RateLimited as exc:  # the server holds all the waits it may: later
                if left <= 0:
                    raise
                time.sleep(min(exc.retry_after, left))
                continue
            if job.state.is_final or deadline - time.monotonic() <= 0:
                return job

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Calls):
    """``Client`` for an event loop: the same calls, each awaited
    (``async with jobq.AsyncClient(url) as q: await q.enqueue(...)``)."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0,
                 http: httpx.AsyncClient | None = None) -> None:
        self._own = http is None
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._headers = _headers(token)

    async def _send(self, call: _Call[T]) -> T:
        try:
            resp = await self._http.request(call.method, call.path, json=call.json,
                                            params=call.params or None,
                                            headers=_with_trace(self._headers, call),
                                            timeout=_timeout(call))
        except httpx.TransportError as exc:
            raise _unreachable(self._http.base_url, exc) from exc
        return _answer(call, resp)

    async def wait(self, job_id: int, timeout: float = 60.0) -> Job:
        """``Client.wait``, awaited."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                job: Job = await self._send(self._wait_call(job_id, min(left, _WAIT_CHUNK)))
            except RateLimited as exc:
                if left <= 0:
                    raise
                await asyncio.sleep(min(exc.retry_after, left))
                continue
            if job.state.is_final or deadline - time.monotonic() <= 0:
                return job

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- requests ---------------------------------------------------------------------------------


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _with_trace(headers: dict[str, str], call: _Call[Any]) -> dict[str, str]:
    """The headers of ``call``: an enqueue's carry the current span's W3C trace context, which
    its job's run continues (``jobq.tracing``)."""
    if not call.traced:
        return headers
    trace = tracing.current_headers()
    return {**headers, **trace} if trace else headers


def _spec(task_type: str, payload: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"unknown enqueue option(s): {', '.join(unknown)}")
    body: dict[str, Any] = {"task_type": task_type, "payload": payload}
    for name, value in options.items():
        if value is not None:
            body[name] = value.isoformat() if isinstance(value, datetime) else value
    return body


def _timeout(call: _Call[Any]) -> Any:
    return httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout


def _unreachable(base_url: httpx.URL, exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"the jobq API at {base_url} cannot be reached: "
                            f"{type(exc).__name__}: {exc}")


# -- answers ----------------------------------------------------------------------------------


def _answer(call: _Call[T], resp: httpx.Response) -> T:
    if resp.status_code < 400:
        return call.read(resp)
    raise _error(call, resp)


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _job(resp: httpx.Response) -> Job:
    return job_of(resp.json())


def job_of(body: Mapping[str, Any]) -> Job:
    """A job as the API shows it (``JobOut`` or ``JobDetail``). The lease token is never
    shown, so it is None."""
    attempts = tuple(
        Attempt(id=None, job_id=body["id"], attempt=a["attempt"], worker_id=a["worker_id"],
                started_at=_time(a["started_at"]),  # type: ignore[arg-type]
                finished_at=_time(a["finished_at"]), outcome=AttemptOutcome(a["outcome"]),
                error=a["error"], traceback=a["traceback"])
        for a in body.get("attempt_log", ())
    )
    return Job(
        id=body["id"], task_type=body["task_type"], payload=body["payload"],
        queue=body["queue"], priority=body["priority"], state=JobState(body["state"]),
        attempts=body["attempts"], max_attempts=body["max_attempts"],
        run_at=_time(body["run_at"]),  # type: ignore[arg-type]
        idempotency_key=body["idempotency_key"], worker_id=body["worker_id"],
        lease_token=None, lease_expires_at=_time(body["lease_expires_at"]),
        result=body["result"], last_error=body["last_error"],
        created_at=_time(body["created_at"]),  # type: ignore[arg-type]
        started_at=_time(body["started_at"]), finished_at=_time(body["finished_at"]),
        unique_key=body.get("unique_key"), unique_for=body.get("unique_for"),
        concurrency_key=body.get("concurrency_key"),
        concurrency_limit=body.get("concurrency_limit"),
        attempt_log=attempts, tags=tuple(body.get("tags") or ()), meta=body.get("meta") or {},
        progress=body.get("progress"), progress_message=body.get("progress_message"),
        progress_at=_time(body.get("progress_at")), timeout_seconds=body.get("timeout_seconds"),
        parents_left=body.get("parents_left"), on_parent_failure=body.get("on_parent_failure"),
        callback_url=body.get("callback_url"),
    )


def _enqueued(resp: httpx.Response) -> EnqueueResult:
    # POST /jobs says whether it made the job by its status: 201, or 200 for the existing one.
    return EnqueueResult(job=job_of(resp.json()), created=resp.status_code == 201)


def _batch(resp: httpx.Response) -> list[EnqueueResult]:
    return [EnqueueResult(job=job_of(j), created=j["created"]) for j in resp.json()["jobs"]]


def _page(resp: httpx.Response) -> Page:
    body = resp.json()
    return Page(items=[job_of(j) for j in body["items"]], next_cursor=body["next_cursor"])


# -- errors -----------------------------------------------------------------------------------

_PREFIX = "urn:jobq:problem:"


def _error(call: _Call[Any], resp: httpx.Response) -> JobqError:
    """The jobq error that a problem answer stands for."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    status = resp.status_code
    kind = str(body.get("type", "")).removeprefix(_PREFIX)
    detail = str(body.get("detail") or body.get("title") or f"HTTP {status}")
    index = body.get("index")
    exc: JobqError
    if status in (502, 503, 504) or kind == "store-unavailable":
        exc = StoreUnavailable(f"the jobq API answered {status}: {detail}")
    elif kind == "job-not-found":
        exc = JobNotFound(int(body.get("job_id", call.job_id or 0)))
    elif kind == "unknown-task":
        exc = UnknownTask(_task_type(call, index), list(body.get("known_task_types") or []))
    elif kind == "idempotency-conflict":
        exc = IdempotencyConflict(str(_option(call, index, "idempotency_key")),
                                  body.get("job_id"))
    elif kind == "invalid-transition":
        exc = InvalidTransition(int(body.get("job_id", call.job_id or 0)),
                                str(body.get("state")), call.action or "change")
    elif kind == "validation-error":
        exc, index = _invalid(call, body.get("errors") or [], detail)
    elif kind == "invalid-cursor":
        exc = InvalidCursor(detail)
    elif kind == "queue-not-found":
        exc = QueueNotFound(str(body.get("queue")))
    elif kind == "key-not-found":
        exc = KeyNotFound(detail)
    elif kind == "invalid-key":
        exc = InvalidKeySpec(detail)
    elif status == 401:
        exc = Unauthorized(detail, invalid_token="invalid_token"
                           in resp.headers.get("WWW-Authenticate", ""))
    elif status == 403:
        exc = Forbidden(detail, required_scope=body.get("required_scope"))
    elif status == 429:
        exc = RateLimited(_retry_after(resp))
    else:
        exc = JobqError(f"the jobq API answered {status}: {detail}")
    exc.index = index if isinstance(index, int) else None
    return exc


def _invalid(call: _Call[Any], errors: list[Any], detail: str
             ) -> tuple[JobqError, int | None]:
    """A 422 validation problem as InvalidJob (or UnknownTask) naming its field, and the
    batch item it is about (``body.jobs.<i>.<field>``)."""
    for err in errors:
        loc = [p for p in err.get("loc", []) if p not in ("body", "query")]
        index = None
        if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int):
            index, loc = loc[1], loc[2:]
        name = ".".join(str(p) for p in loc) or "request"
        if err.get("type") == "unknown_task":
            return UnknownTask(_task_type(call, index), []), index
        return InvalidJob(name, str(err.get("msg", "invalid"))), index
    return InvalidJob("request", detail), None


def _option(call: _Call[Any], index: Any, name: str) -> Any:
    body = call.json or {}
    if isinstance(index, int) and "jobs" in body and 0 <= index < len(body["jobs"]):
        body = body["jobs"][index]
    return body.get(name) if isinstance(body, dict) else None


def _task_type(call: _Call[Any], index: Any) -> str:
    return str(_option(call, index, "task_type"))


def _retry_after(resp: httpx.Response) -> int:
    try:
        return int(resp.headers.get("Retry-After", "1"))
    except ValueError:
        return 1
