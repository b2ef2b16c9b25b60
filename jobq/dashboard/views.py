"""What every dashboard route shares: who the viewer is, the service, and errors answered
as HTML pages (the API's problems, shown as a page with the same status)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from jobq.api.problems import error_problem
from jobq.api.routes import get_service
from jobq.dashboard.render import SECURITY_HEADERS, page
from jobq.dashboard.session import LoginNeeded, Viewer, viewer
from jobq.errors import JobqError
from jobq.service import JobService

Build = Callable[[Viewer, JobService], tuple[str, dict[str, Any]]]


class BadInput(Exception):
    """A query parameter or form field the dashboard cannot use: a 400 page."""


async def error_page(request: Request, who: Viewer | None, exc: Exception) -> Response:
    if isinstance(exc, BadInput):
        return page(request, who, "error.html", 400, title="Bad request", detail=str(exc))
    assert isinstance(exc, JobqError)
    problem = await error_problem(request, exc)  # the API's one mapping of errors
    body = json.loads(bytes(problem.body))
    response = page(request, who, "error.html", problem.status_code,
                    title=body.get("title", "Error"), detail=body.get("detail", ""))
    if "retry-after" in problem.headers:
        response.headers["Retry-After"] = problem.headers["retry-after"]
    return response


def to_login(request: Request, reason: str | None) -> Response:
    target = request.url.path
    if request.method == "GET" and request.url.query:
        target += "?" + request.url.query
    location = "/dashboard/login?next=" + quote(target, safe="")
    if reason:
        location += "&why=ended"
    return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)


def safe_next(value: str | None) -> str:
    """A dashboard path to go back to; anything else (another site, //host) is the overview."""
    if value and value.startswith("/dashboard") and not value.startswith("//") and (
            "\\" not in value) and all(c.isprintable() for c in value):
        return value
    return "/dashboard"


async def show(request: Request, build: Build) -> Response:
    """A page: the viewer (or the login), then ``build`` in the threadpool (it reads the
    database), then its template."""
    try:
        who = await viewer(request)
    except LoginNeeded as exc:
        return to_login(request, exc.reason)
    except JobqError as exc:  # RateLimited, StoreUnavailable
        return await error_page(request, None, exc)
    try:
        template, context = await run_in_threadpool(build, who, await get_service(request))
    except (JobqError, BadInput) as exc:
        return await error_page(request, who, exc)
    return page(request, who, template, **context)
