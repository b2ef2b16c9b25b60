"""Every HTTP error of the API is an RFC 9457 problem (``application/problem+json``).

This module is the one place that maps failures to problems: domain errors (``jobq.errors``),
request validation errors, Starlette's HTTP errors (unknown route, wrong method, body too
large) and, as a last resort, any other exception, which becomes a 500 that names nothing of
the internals (no traceback, no SQL, no driver message).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobq.api.models import Problem
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

log = logging.getLogger("jobq.api")

PROBLEM_JSON = "application/problem+json"

#: Seconds a client should wait before retrying when the database is unavailable.
RETRY_AFTER_SECONDS = 5

#: Problem types are URNs: stable identifiers that need no documentation server.
_TYPE_PREFIX = "urn:jobq:problem:"

#: Domain error -> (status, type slug, title). Looked up along the error's MRO.
_DOMAIN: dict[type[JobqError], tuple[int, str, str]] = {
    JobNotFound: (404, "job-not-found", "Job not found"),
    UnknownTask: (422, "unknown-task", "Unknown task type"),
    IdempotencyConflict: (409, "idempotency-conflict", "Idempotency key reused"),
    InvalidTransition: (409, "invalid-transition", "Invalid state transition"),
    InvalidCursor: (422, "invalid-cursor", "Invalid cursor"),
    InvalidJob: (422, "invalid-job", "Invalid job"),
    StoreUnavailable: (503, "store-unavailable", "Database unavailable"),
    Unauthorized: (401, "unauthorized", "Authentication required"),
    Forbidden: (403, "forbidden", "Forbidden"),
    RateLimited: (429, "rate-limited", "Too many requests"),
    QueueNotFound: (404, "queue-not-found", "Queue not found"),
    KeyNotFound: (404, "key-not-found", "API key not found"),
    InvalidKeySpec: (422, "invalid-key", "Invalid API key"),
}

#: The ``WWW-Authenticate`` challenge of every 401 (RFC 6750).
BEARER_CHALLENGE = 'Bearer realm="jobq"'

#: The statuses each route may answer with a problem, for the OpenAPI document.
_DESCRIPTIONS = {
    400: "The request body could not be read, the Host header names a host the API does not "
         "answer to (`JOBQ_ALLOWED_HOSTS`), or two Authorization headers were sent.",
    401: "No valid API key: send `Authorization: Bearer <token>`.",
    403: "The API key lacks the scope this request needs, or a state-changing request came "
         "from a web page of another origin (`JOBQ_ALLOWED_ORIGINS`).",
    404: "No such job, or a job or queue outside the API key's queues.",
    409: "The job's state or the idempotency key forbids this request.",
    413: "The request body is too large.",
    422: "The request is invalid; `errors` lists each problem with its location.",
    429: "The API key made too many requests, or this client address too many failed "
         "authentications; retry after `Retry-After` seconds.",
    503: "The database is unavailable; retry after `Retry-After` seconds.",
}


#: Where the OpenAPI document keeps the Problem schema (jobq.api.openapi puts it there).
PROBLEM_SCHEMA_REF = "#/components/schemas/" + Problem.__name__


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problems a route can answer with.

    The schema is declared under ``application/problem+json``, the one media type the server
    sends them as, and nowhere else: a client picks the schema by the response's media type,
    so under ``application/json`` (where FastAPI puts a response ``model``) it parsed every
    problem as nothing. Hence a reference, not ``model``; the schema itself is added to the
    document's components by jobq.api.openapi.
    """
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, _phrase(status)),
            "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}},
        }
        for status in statuses
    }


def _printable(value: Any) -> Any:
    """Make any string safe to encode as UTF-8 JSON (a lone surrogate cannot be)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    request: Request,
    status: int,
    *,
    type_: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    phrase = _phrase(status)
    body: dict[str, Any] = {
        # RFC 9457: "about:blank" means the status code says it all; its title is the phrase.
        "type": _TYPE_PREFIX + type_ if type_ else "about:blank",
        "title": title or phrase,
        "status": status,
        "detail": detail or phrase,
        "instance": request.url.path,
        **extensions,
    }
    return JSONResponse(
        _printable(body), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def _domain_kind(exc: JobqError) -> tuple[int, str, str] | None:
    for cls in type(exc).__mro__:
        if cls in _DOMAIN:
            return _DOMAIN[cls]
    return None


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobqError)
    kind = _domain_kind(exc)
    if kind is None:
        # Handled here, so nothing re-raises it: log the traceback ourselves.
        log.error("unmapped %s", type(exc).__name__, exc_info=exc)
        return await _unexpected_error(request, exc)
    status, slug, title = kind
    extensions: dict[str, Any] = {}
    headers: dict[str, str] | None = None
    detail = str(exc)
    if isinstance(exc, UnknownTask):
        extensions["known_task_types"] = list(exc.known)
    elif isinstance(exc, IdempotencyConflict):
        if exc.job_id is not None:  # None: an earlier item of the same batch
            extensions["job_id"] = exc.job_id
    elif isinstance(exc, InvalidTransition):
        extensions.update(job_id=exc.job_id, state=str(exc.state))
    elif isinstance(exc, JobNotFound):
        extensions["job_id"] = exc.job_id
    elif isinstance(exc, StoreUnavailable):
        # The driver's message can name hosts and users: log it, do not send it.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        detail = "the database is unavailable; try again later"
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    elif isinstance(exc, Unauthorized):
        challenge = BEARER_CHALLENGE
        if exc.invalid_token:
            challenge += ', error="invalid_token"'
        headers = {"WWW-Authenticate": challenge}
    elif isinstance(exc, Forbidden):
        if exc.required_scope is not None:
            extensions["required_scope"] = exc.required_scope
    elif isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, QueueNotFound):
        extensions["queue"] = exc.queue
    if exc.index is not None:  # an item of POST /jobs/batch
        extensions["index"] = exc.index
    return problem_response(
        request, status, type_=slug, title=title, detail=detail, headers=headers, **extensions
    )


async def error_problem(request: Request, exc: JobqError) -> JSONResponse:
    """The problem for a domain error raised where the exception handlers do not reach (in a
    middleware that runs before the app's routing)."""
    return await _domain_error(request, exc)


def _loc_text(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"} and len(parts) > 1:
        return f"{'.'.join(parts[1:])} ({parts[0]})"
    return ".".join(parts) or "request"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors, lines = [], []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        ctx = err.get("ctx") or {}
        where = _loc_text(loc)
        if err.get("type") == "json_invalid":
            # FastAPI puts the character offset where a field name would be.
            where = "body"
            if isinstance(ctx.get("error"), str):
                msg = f"{msg} at character {loc[-1]}: {ctx['error']}"
        # Only location, message and type: the rejected input itself is never echoed, since it
        # may be huge or not encodable as JSON at all (NaN, lone surrogates).
        errors.append({"loc": loc, "msg": msg, "type": err.get("type")})
        lines.append(f"{where}: {msg}")
    summary = "; ".join(lines[:5])
    if len(lines) > 5:
        summary += f"; and {len(lines) - 5} more"
    return problem_response(
        request,
        422,
        type_="validation-error",
        title="Invalid request",
        detail=summary or "the request is invalid",
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404 and detail in (None, "Not Found"):
        detail = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(
        request, exc.status_code, detail=detail, headers=dict(exc.headers or {}) or None
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this response is sent, so the server logs the
    # traceback; the client learns only that it happened. The server then drops the
    # connection, so tell the client not to reuse it.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return problem_response(
        request,
        500,
        type_="internal-error",
        title="Internal server error",
        detail="an unexpected error occurred; it has been logged",
        headers={"Connection": "close"},
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JobqError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
