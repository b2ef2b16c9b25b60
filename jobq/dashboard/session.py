"""Who is looking at the dashboard, and the CSRF token of their forms.

**The session is the API token itself**, in one cookie (``jobq_dashboard``: HttpOnly,
SameSite=Strict, Path=/dashboard, Secure over https, 12 hours), verified on every request by
the API's own :class:`~jobq.api.auth.Authenticator`, as a Bearer header would be. So a revoked
key logs its sessions out within ``JOBQ_API_KEY_CACHE_SECONDS``, a session works on every API
process (no server-side state, no secret to share), and failed logins spend the same
per-address budget as failed API calls. Page scripts cannot read it (HttpOnly), and no
other site's page can make the browser send it (SameSite=Strict; RequestGuard also refuses
a POST from another Origin).

Before login, and in open mode, the cookie holds ``anon.<random>`` instead: the login form
needs a CSRF token too (login CSRF), and open mode has no token to bind one to.

**CSRF**: every form carries ``HMAC-SHA256(cookie value, "jobq-dashboard-csrf")``; a POST
whose field does not match its cookie is refused (403). The token is bound to the session
without any state: a page of another site can read neither the cookie nor a dashboard page.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from jobq.api.auth import Authenticator, Caller, client_key, get_authenticator
from jobq.errors import Unauthorized
from jobq.keys import ADMIN, READ

COOKIE = "jobq_dashboard"
COOKIE_PATH = "/dashboard"
ANON = "anon."
SESSION_SECONDS = 12 * 3600


class LoginNeeded(Exception):
    """No valid session while API keys exist: the page answers with the login form."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Viewer:
    """The caller behind a dashboard request, and what its forms need."""

    caller: Caller
    cookie: str
    new_cookie: bool  # the cookie was made for this request: the response must set it

    @property
    def open_mode(self) -> bool:
        return self.caller.key is None

    @property
    def csrf(self) -> str:
        return csrf_for(self.cookie)

    @property
    def can_act(self) -> bool:
        return self.caller.key is None or self.caller.key.grants(ADMIN)

    @property
    def allowed(self) -> frozenset[str] | None:
        return self.caller.allowed_queues

    @property
    def key_label(self) -> str | None:
        key = self.caller.key
        return None if key is None else f"{key.name} ({key.prefix})"


def csrf_for(cookie: str) -> str:
    return hmac.new(cookie.encode(), b"jobq-dashboard-csrf", hashlib.sha256).hexdigest()


def csrf_ok(cookie: str | None, given: str | None) -> bool:
    return bool(cookie) and bool(given) and hmac.compare_digest(
        csrf_for(cookie or ""), given or "")


def anonymous_cookie() -> str:
    return ANON + secrets.token_urlsafe(24)


def set_cookie(request: Request, response: Response, value: str, *, token: bool) -> None:
    response.set_cookie(
        COOKIE, value, path=COOKIE_PATH, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
        max_age=SESSION_SECONDS if token else None,
    )


async def keys_configured(auth: Authenticator) -> bool:
    cached = auth.cached_keys_configured()
    if cached is not None:
        return cached
    return await run_in_threadpool(auth.keys_configured)


async def verify_token(request: Request, token: str) -> Caller:
    """The caller of ``token``, as the API's Bearer check decides it (the same cache, rate
    limits and failure budget). Raises Unauthorized, RateLimited, StoreUnavailable."""
    auth = get_authenticator(request)
    client = client_key(request.scope)
    caller = auth.caller_from_memory(token, header_given=True, client=client)
    if caller is None:
        caller = await run_in_threadpool(
            functools.partial(auth.caller, token, header_given=True, client=client))
    return caller


async def viewer(request: Request) -> Viewer:
    """The request's viewer; raises LoginNeeded when keys exist and the session is missing,
    invalid, revoked, or its key lacks ``read``."""
    cookie = request.cookies.get(COOKIE) or ""
    fresh = not cookie
    if fresh:
        cookie = anonymous_cookie()
    if not await keys_configured(get_authenticator(request)):
        return Viewer(Caller(key=None), cookie, fresh)
    if cookie.startswith(ANON):
        raise LoginNeeded()
    try:
        caller = await verify_token(request, cookie)
    except Unauthorized:
        raise LoginNeeded("your session ended: its API key is unknown or was revoked") from None
    if caller.key is not None and not caller.key.grants(READ):
        raise LoginNeeded("this API key lacks the 'read' scope the dashboard needs")
    return Viewer(caller, cookie, fresh)
