"""Who is calling, and what they may do: API keys for the HTTP API.

The rules, in the order a request meets them:

1. **Open mode.** While the database holds no active key, every request is allowed, and the
   API only answers on a loopback address: :class:`OpenApiGuard` refuses, with a 403 problem,
   any request that reached a non-loopback server address, unless ``JOBQ_ALLOW_OPEN_API=true``.
   Creating the first key closes the API within ``JOBQ_API_KEY_CACHE_SECONDS``.
2. **401** when keys exist and the request has no ``Authorization: Bearer <token>``, or its
   token is malformed, unknown or revoked; always with ``WWW-Authenticate: Bearer realm="jobq"``.
   Decided by :class:`Authenticate` before the body is read. Each 401 spends from the client
   address's budget of failures (a token bucket per address and API process:
   ``JOBQ_AUTH_FAILURES_PER_SECOND`` refill, ``JOBQ_AUTH_FAILURE_BURST`` size); an address
   that has spent it gets **429** with ``Retry-After`` before its token is looked at.
3. **429** with ``Retry-After`` when the key has spent its budget (a token bucket per key and
   per API process: ``JOBQ_RATE_LIMIT_PER_SECOND`` refill, ``JOBQ_RATE_LIMIT_BURST`` size).
4. **403** when the key lacks the scope the route needs: ``read`` (GET /jobs, GET /jobs/{id},
   GET /stats, GET /schedules, GET /queues), ``enqueue`` (POST /jobs, POST /jobs/batch),
   ``admin`` (cancel, retry, pause and resume a queue; implies the other two). Also decided by :class:`Authenticate`, before the body.
5. **404** for every job or queue outside the key's queues: such a job or queue does not exist
   for the key, whether it exists or not (the service applies this; see ``allowed_queues``).

What an API process reads about keys it trusts for ``JOBQ_API_KEY_CACHE_SECONDS`` (default 2 s):
a revoked key stops working, and a new first key closes an open API, within that time. Answers
for unknown prefixes are kept just as long, never longer; database errors are never kept.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from jobq.api.problems import RETRY_AFTER_SECONDS, error_problem, problem_response
from jobq.errors import Forbidden, JobqError, RateLimited, StoreUnavailable, Unauthorized
from jobq.keys import ADMIN, ENQUEUE, READ, ApiKey, parse_token
from jobq.service import JobService

log = logging.getLogger("jobq.api")

#: Most key lookups an API process remembers; beyond it, the cache is emptied.
MAX_CACHED_KEYS = 10_000

#: Most client addresses whose failed authentications an API process counts; beyond it, the
#: one counted least recently is forgotten (its bucket has most likely refilled anyway).
MAX_CLIENTS_COUNTED = 10_000

Clock = Callable[[], float]


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address, or ``localhost``) can only be reached from this machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False  # a name or a Unix socket path: not known to be loopback
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


OPEN_API_REFUSAL = (
    "no API key exists, so the API is open and answers only on a loopback address; "
    "create a key with `jobq keys create`, or set JOBQ_ALLOW_OPEN_API=true to serve "
    "it open on other addresses"
)


@dataclass(frozen=True)
class Caller:
    """The API key behind a request; ``key`` is None in open mode (everything allowed)."""

    key: ApiKey | None

    @property
    def allowed_queues(self) -> frozenset[str] | None:
        """The queues the caller may see and use; None for every queue."""
        if self.key is None or self.key.all_queues:
            return None
        return frozenset(self.key.queues)

    def require(self, scope: str) -> None:
        if self.key is not None and not self.key.grants(scope):
            raise Forbidden(
                f"this API key (prefix {self.key.prefix}) lacks the {scope!r} scope",
                required_scope=scope,
            )


class RateLimiter:
    """A token bucket per key (an API key's id, a client address): ``burst`` requests at once,
    refilled at ``per_second``; ``max_keys`` bounds how many keys it holds.

    In memory, so per API process: with N API processes a key gets N times the rate.
    """

    def __init__(self, per_second: float, burst: int, clock: Clock = time.monotonic,
                 max_keys: int | None = None) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        # key -> (tokens, when), least recently spent first
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> int | None:
        """Spend one request; None when allowed, else the whole seconds to wait."""
        return self._spend(key, spend=True)

    def wait(self, key: Hashable) -> int | None:
        """The whole seconds until ``key`` may spend one request (None: now); spends nothing."""
        return self._spend(key, spend=False)

    def _spend(self, key: Hashable, *, spend: bool) -> int | None:
        if self.per_second <= 0:
            return None
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.per_second)
            if tokens >= 1 and not spend:
                return None
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._buckets.pop(key, None)  # re-inserted last: the dict stays in order of use
            self._buckets[key] = (tokens, now)
            while self.max_keys is not None and len(self._buckets) > self.max_keys:
                del self._buckets[next(iter(self._buckets))]
        if allowed:
            return None
        return max(1, math.ceil((1 - tokens) / self.per_second))


def client_key(scope: Scope) -> Hashable | None:
    """Who a request's failed authentications are counted against: its client's IPv4
    address, or the /64 network of an IPv6 one (one host commonly holds a whole /64); None
    when the client address is unknown (a Unix socket), whose failures are not counted."""
    client: Any = scope.get("client")
    if not client or not isinstance(client[0], str):
        return None
    host = client[0]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Authenticator:
    """Resolves tokens to keys for one API process, remembering answers for a short time."""

    def __init__(self, service: JobService, clock: Clock = time.monotonic) -> None:
        settings = service.settings
        self.service = service
        self.ttl = settings.api_key_cache_seconds
        self.allow_open = settings.allow_open_api
        self.clock = clock
        self.limiter = RateLimiter(
            settings.rate_limit_per_second, settings.rate_limit_burst, clock
        )
        self.failures = RateLimiter(
            settings.auth_failures_per_second, settings.auth_failure_burst, clock,
            max_keys=MAX_CLIENTS_COUNTED,
        )
        self._lock = threading.Lock()
        self._configured: tuple[float, bool] | None = None  # (valid until, answer)
        self._keys: dict[str, tuple[float, ApiKey | None]] = {}  # prefix -> (valid until, key)

    # -- what the database says, briefly remembered -------------------------------------------

    def cached_keys_configured(self) -> bool | None:
        """The remembered answer of ``keys_configured``, or None when there is none."""
        hit = self._configured
        return hit[1] if hit is not None and hit[0] > self.clock() else None

    def keys_configured(self) -> bool:
        """Whether any active key exists (else the API is open). Raises StoreUnavailable."""
        answer = self._keys_configured(memory_only=False)
        assert answer is not None
        return answer

    def _keys_configured(self, *, memory_only: bool) -> bool | None:
        cached = self.cached_keys_configured()
        if cached is not None or memory_only:
            return cached
        now = self.clock()
        answer = self.service.keys_configured()
        self._configured = (now + self.ttl, answer)
        return answer

    def _lookup(
        self, prefix: str, *, memory_only: bool
    ) -> tuple[ApiKey | None, bool] | None:
        """The key with ``prefix`` and whether it was just read from the database; None when
        ``memory_only`` and it is not remembered."""
        now = self.clock()
        with self._lock:
            hit = self._keys.get(prefix)
        if hit is not None and hit[0] > now:
            return hit[1], False
        if memory_only:
            return None
        key = self.service.find_key(prefix)
        if self.ttl > 0:
            with self._lock:
                if len(self._keys) >= MAX_CACHED_KEYS:
                    self._keys = {p: e for p, e in self._keys.items() if e[0] > now}
                    if len(self._keys) >= MAX_CACHED_KEYS:
                        self._keys.clear()
                self._keys[prefix] = (now + self.ttl, key)
        return key, True

    # -- the decision -------------------------------------------------------------------------

    def caller(self, token: str | None, *, header_given: bool,
               client: Hashable | None = None) -> Caller:
        """The caller of a request with ``token`` (None: no bearer token) from ``client``
        (see ``client_key``; None: failures not counted).

        Raises Unauthorized (401), RateLimited (429) or StoreUnavailable (503).
        """
        decided = self._decide(token, header_given, client, memory_only=False)
        assert decided is not None
        return decided

    def caller_from_memory(self, token: str | None, *, header_given: bool,
                           client: Hashable | None = None) -> Caller | None:
        """``caller``, decided from what is remembered alone, never waiting on the database
        (so it may run on the event loop); None when the database must be asked."""
        return self._decide(token, header_given, client, memory_only=True)

    def _decide(self, token: str | None, header_given: bool, client: Hashable | None, *,
                memory_only: bool) -> Caller | None:
        if client is not None:
            # First, so that an address that keeps failing costs no lookup at all.
            wait = self.failures.wait(client)
            if wait is not None:
                raise RateLimited(wait, "failed authentications from this address")
        try:
            return self._authenticate(token, header_given, memory_only=memory_only)
        except Unauthorized:
            # Raised once per request: the pass from memory returns None rather than raise
            # when it would need the database.
            if client is not None:
                self.failures.take(client)
            raise

    def _authenticate(self, token: str | None, header_given: bool, *,
                      memory_only: bool) -> Caller | None:
        configured = self._keys_configured(memory_only=memory_only)
        if configured is None:
            return None
        if not configured:
            return Caller(key=None)  # open mode: OpenApiGuard keeps it on loopback
        if token is None:
            raise Unauthorized(
                "this API needs an API key: send `Authorization: Bearer <token>`",
                invalid_token=header_given,
            )
        parsed = parse_token(token)
        found = (self._lookup(parsed.prefix, memory_only=memory_only) if parsed is not None
                 else (None, False))
        if found is None:
            return None
        key, fresh = found
        # matches() compares hashes in constant time; the prefix is public anyway.
        if parsed is None or key is None or not key.active or not key.matches(parsed.secret):
            raise Unauthorized(
                "the API key is not valid: it is malformed, unknown or revoked",
                invalid_token=True,
            )
        if fresh:
            self._touch(key)
        retry_after = self.limiter.take(key.id)
        if retry_after is not None:
            raise RateLimited(retry_after)
        return Caller(key=key)

    def _touch(self, key: ApiKey) -> None:
        # Best effort: last_used_at is for operators; failing to record it fails no request.
        try:
            self.service.touch_key(key.id)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record the use of API key %s: %s", key.prefix, exc)

    def announce(self) -> None:
        """Say at startup whether the API needs keys or is open."""
        try:
            configured = self.keys_configured()
        except StoreUnavailable as exc:
            log.warning("could not check for API keys at startup (%s); each request will", exc)
            return
        if configured:
            log.info("API keys are required (Authorization: Bearer <token>)")
        elif self.allow_open:
            log.warning(
                "the API is OPEN: no API key exists, so every request is allowed, and "
                "JOBQ_ALLOW_OPEN_API=true lets it answer on any address. Create a key with "
                "`jobq keys create` to close it."
            )
        else:
            log.warning(
                "the API is OPEN: no API key exists, so every request is allowed; it answers "
                "only on loopback addresses. Create a key with `jobq keys create` to close it."
            )


# -- FastAPI dependencies ---------------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    # A component name: OpenAPI allows only [A-Za-z0-9._-] (openapi-generator refused "jobq
    # API key"); the document makes it optional (jobq.api.openapi: open mode needs none).
    scheme_name="jobqApiKey",
    description="`jobq keys create` prints a token; send it as `Authorization: Bearer <token>`.",
)


def get_authenticator(request: Request) -> Authenticator:
    auth: Authenticator | None = getattr(request.app.state, "auth", None)
    if auth is None:
        raise RuntimeError("the jobq app was not started: its lifespan has not run")
    return auth


#: Where :class:`Authenticate` leaves the caller it decided, in the request's ASGI scope.
CALLER_SCOPE_KEY = "jobq.caller"


async def decide_caller(auth: Authenticator, request: Request) -> Caller:
    """The request's caller: decided on the event loop when the remembered answers suffice
    (nearly every request), in the threadpool when the database must be asked."""
    credentials = await _bearer(request)
    token = credentials.credentials if credentials is not None else None
    given = "authorization" in request.headers
    client = client_key(request.scope)
    caller = auth.caller_from_memory(token, header_given=given, client=client)
    if caller is not None:
        return caller
    return await run_in_threadpool(
        functools.partial(auth.caller, token, header_given=given, client=client))


async def current_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The request's caller, as :class:`Authenticate` decided it before the body was read
    (``credentials`` is here for the OpenAPI document's security scheme)."""
    decided = request.scope.get(CALLER_SCOPE_KEY)
    if isinstance(decided, Caller):
        return decided
    return await decide_caller(get_authenticator(request), request)


def _needs(scope: str) -> Callable[[Caller], Awaitable[Caller]]:
    async def dependency(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
        caller.require(scope)
        return caller

    dependency.__name__ = f"needs_{scope}"
    dependency.required_scope = scope  # type: ignore[attr-defined]  # for Authenticate
    return dependency


#: A caller allowed to read jobs and stats of its queues.
Reader = Annotated[Caller, Depends(_needs(READ))]
#: A caller allowed to submit jobs to its queues.
Enqueuer = Annotated[Caller, Depends(_needs(ENQUEUE))]
#: A caller allowed to cancel and retry jobs of its queues.
Admin = Annotated[Caller, Depends(_needs(ADMIN))]


# -- authentication before the body ----------------------------------------------------------


class Authenticate:
    """Decide the caller of every request to a route that needs one, and check its scope,
    before anything reads the body: a request without a valid key or the scope is answered
    (401, 429, 403, 503) at once, its body neither read nor parsed. The route's dependency
    then takes the caller from the scope. The routes that need one are those of ``routers``
    that depend on ``current_caller``; requests to others (``/healthz``, the docs) or to no
    route (404, 405) pass unchanged.
    """

    def __init__(self, app: ASGIApp, routers: Iterable[APIRouter]) -> None:
        self.app = app
        self.routes = [route for router in routers for route in router.routes
                       if isinstance(route, APIRoute)]
        # id(route) -> (whether it needs a caller, the scopes its dependencies require)
        self._needs = {id(route): _requirements(route.dependant) for route in self.routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        needs = self._route_needs(scope) if scope["type"] == "http" else None
        auth: Authenticator | None = (
            getattr(scope["app"].state, "auth", None) if needs is not None else None)
        if needs is None or not needs[0] or auth is None:  # auth None: the dependency says
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            caller = await decide_caller(auth, request)
            for required in needs[1]:
                caller.require(required)
        except JobqError as exc:  # Unauthorized, RateLimited, Forbidden, StoreUnavailable
            response = await error_problem(request, exc)
            await response(scope, receive, send)
            return
        scope[CALLER_SCOPE_KEY] = caller
        await self.app(scope, receive, send)

    def _route_needs(self, scope: Scope) -> tuple[bool, list[str]] | None:
        for route in self.routes:  # as the router does: the first full match is the route
            if route.matches(scope)[0] is Match.FULL:
                return self._needs[id(route)]
        return None


def _requirements(dependant: Dependant) -> tuple[bool, list[str]]:
    needs_caller, scopes = False, []
    for dep in dependant.dependencies:
        if dep.call is current_caller:
            needs_caller = True
        if isinstance(getattr(dep.call, "required_scope", None), str):
            scopes.append(dep.call.required_scope)  # type: ignore[union-attr]
        inner_needs, inner_scopes = _requirements(dep)
        needs_caller = needs_caller or inner_needs
        scopes += inner_scopes
    return needs_caller, scopes


# -- open mode stays on loopback --------------------------------------------------------------


class OpenApiGuard:
    """Refuse every request that reached a non-loopback address while the API is open.

    An ASGI middleware rather than a dependency, so that it covers every path (docs too).
    Requests to a loopback address pass without any check.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_loopback(_server_host(scope)):
            await self.app(scope, receive, send)
            return
        auth: Authenticator | None = getattr(scope["app"].state, "auth", None)
        if auth is None or auth.allow_open:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        configured = auth.cached_keys_configured()
        if configured is None:
            try:
                configured = await run_in_threadpool(auth.keys_configured)
            except StoreUnavailable as exc:
                log.warning("database unavailable on %s %s: %s", request.method,
                            request.url.path, exc)
                response = problem_response(
                    request, 503, type_="store-unavailable", title="Database unavailable",
                    detail="the database is unavailable; try again later",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
                await response(scope, receive, send)
                return
        if configured:
            await self.app(scope, receive, send)
            return
        response = problem_response(
            request, 403, type_="open-api-not-local", title="Open API refused",
            detail=OPEN_API_REFUSAL,
        )
        await response(scope, receive, send)


def _server_host(scope: Scope) -> str | None:
    server: Any = scope.get("server")
    if not server:
        return None
    host = server[0]
    return host if isinstance(host, str) else None
