"""The dashboard's actions, each a POST of a form with its CSRF token: log in and out,
retry and cancel a job, retry every failed job that matches, pause and resume a queue.

An action needs the ``admin`` scope (or open mode), as its REST twin does; it answers with a
303 back to the page it came from, or with an error page."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from jobq.api.auth import Caller, get_authenticator
from jobq.api.routes import get_service
from jobq.dashboard.render import SECURITY_HEADERS, page
from jobq.dashboard.session import (
    COOKIE, LoginNeeded, Viewer, anonymous_cookie, csrf_ok, keys_configured, set_cookie,
    verify_token, viewer,
)
from jobq.dashboard.views import BadInput, error_page, safe_next, to_login
from jobq.errors import JobqError, RateLimited, StoreUnavailable, Unauthorized
from jobq.keys import READ
from jobq.service import JobService

actions = APIRouter(prefix="/dashboard", include_in_schema=False)

FORM = "application/x-www-form-urlencoded"

async def form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
        raise BadInput("send the form as application/x-www-form-urlencoded")
    try:
        fields = parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise BadInput("the form is not UTF-8") from None
    if any(len(v) > 1 for v in fields.values()):
        raise BadInput("each field at most once")
    return {k: v[0] for k, v in fields.items()}


def back(to: str, notice: str, **extra: Any) -> Response:
    sep = "&" if "?" in to else "?"
    query = urlencode({"notice": notice, **{k: v for k, v in extra.items()}})
    return RedirectResponse(f"{to}{sep}{query}", status_code=303, headers=SECURITY_HEADERS)


async def act(request: Request, run: Any) -> Response:
    """Check the session, the CSRF token and the admin scope, then ``run(service, allowed,
    fields)`` in the threadpool; it returns the redirect."""
    try:
        who = await viewer(request)
    except LoginNeeded as exc:
        return to_login(request, exc.reason)
    except JobqError as exc:
        return await error_page(request, None, exc)
    try:
        fields = await form(request)
    except BadInput as exc:
        return await error_page(request, who, exc)
    if who.new_cookie or not csrf_ok(request.cookies.get(COOKIE), fields.get("csrf")):
        return page(request, who, "error.html", 403, title="Forbidden",
                    detail="the form's CSRF token is missing or wrong: reload the page and "
                    "try again")
    if not who.can_act:
        return page(request, who, "error.html", 403, title="Forbidden",
                    detail="this API key lacks the 'admin' scope that actions need")
    service: JobService = await get_service(request)
    try:
        result: Response = await run_in_threadpool(run, service, who.allowed, fields)
        return result
    except (JobqError, BadInput) as exc:
        return await error_page(request, who, exc)


def _job_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) < 2**63:
        raise BadInput("a job's id is a positive integer")
    return int(raw)


@actions.post("/jobs/{job_id}/retry")
async def retry(request: Request, job_id: str) -> Response:
    def run(service: JobService, allowed: Any, fields: dict[str, str]) -> Response:
        service.retry(_job_id(job_id), allowed_queues=allowed)
        return back(safe_next(fields.get("next") or f"/dashboard/jobs/{job_id}"), "retried")
    return await act(request, run)


@actions.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str) -> Response:
    def run(service: JobService, allowed: Any, fields: dict[str, str]) -> Response:
        service.cancel(_job_id(job_id), allowed_queues=allowed)
        return back(safe_next(fields.get("next") or f"/dashboard/jobs/{job_id}"), "cancelled")
    return await act(request, run)


@actions.post("/failed/retry")
async def retry_all(request: Request) -> Response:
    def run(service: JobService, allowed: Any, fields: dict[str, str]) -> Response:
        queue = fields.get("queue") or None
        task = fields.get("task") or None
        result = service.retry_matching(queue=queue, task_type=task, allowed_queues=allowed)
        to = "/dashboard/failed"
        kept = {k: v for k, v in (("queue", queue), ("task", task)) if v}
        if kept:
            to += "?" + urlencode(kept)
        return back(to, "retried-all", n=str(result.changed))
    return await act(request, run)


@actions.post("/queues/{name}/pause")
async def pause(request: Request, name: str) -> Response:
    def run(service: JobService, allowed: Any, fields: dict[str, str]) -> Response:
        service.pause_queue(name, allowed_queues=allowed)
        return back("/dashboard/queues", "paused")
    return await act(request, run)


@actions.post("/queues/{name}/resume")
async def resume(request: Request, name: str) -> Response:
    def run(service: JobService, allowed: Any, fields: dict[str, str]) -> Response:
        service.resume_queue(name, allowed_queues=allowed)
        return back("/dashboard/queues", "resumed")
    return await act(request, run)


# -- login and logout -------------------------------------------------------------------------


def _login_page(request: Request, cookie: str, fresh: bool, status: int = 200,
                error: str | None = None) -> Response:
    anon = Viewer(Caller(key=None), cookie, fresh)
    response = page(request, None, "login.html", status, csrf=anon.csrf, error=error,
                    next=safe_next(request.query_params.get("next")),
                    ended=request.query_params.get("why") == "ended")
    if fresh:
        set_cookie(request, response, cookie, token=False)
    return response


@actions.get("/login")
async def login_form(request: Request) -> Response:
    try:
        if not await keys_configured(get_authenticator(request)):
            return RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
    except StoreUnavailable as exc:
        return await error_page(request, None, exc)
    cookie = request.cookies.get(COOKIE) or ""
    if cookie.startswith("anon."):
        return _login_page(request, cookie, False)
    # No cookie, or a session's token: a new anonymous one (logging in replaces it anyway).
    return _login_page(request, anonymous_cookie(), True)


@actions.post("/login")
async def login(request: Request) -> Response:
    cookie = request.cookies.get(COOKIE) or ""
    try:
        fields = await form(request)
    except BadInput as exc:
        return await error_page(request, None, exc)
    if not csrf_ok(cookie, fields.get("csrf")):
        return _login_page(request, anonymous_cookie(), True, 403,
                           "the form expired: try again")
    token = fields.get("token", "").strip()
    try:
        caller = await verify_token(request, token)
    except Unauthorized:
        return _login_page(request, cookie, False, 401,
                           "that token is not valid: it is malformed, unknown or revoked")
    except (RateLimited, StoreUnavailable) as exc:
        return await error_page(request, None, exc)
    if caller.key is not None and not caller.key.grants(READ):
        return _login_page(request, cookie, False, 403,
                           "this API key lacks the 'read' scope the dashboard needs")
    response = RedirectResponse(safe_next(fields.get("next")), status_code=303,
                                headers=SECURITY_HEADERS)
    if caller.key is not None:  # open mode has nothing to log in to
        set_cookie(request, response, token, token=True)
    return response


@actions.post("/logout")
async def logout(request: Request) -> Response:
    cookie = request.cookies.get(COOKIE) or ""
    try:
        fields = await form(request)
    except BadInput as exc:
        return await error_page(request, None, exc)
    if not csrf_ok(cookie, fields.get("csrf")):
        return page(request, None, "error.html", 403, title="Forbidden",
                    detail="the form's CSRF token is missing or wrong")
    response = RedirectResponse("/dashboard/login", status_code=303, headers=SECURITY_HEADERS)
    set_cookie(request, response, anonymous_cookie(), token=False)
    return response
