"""The FastAPI application: create_app() builds it; its lifespan owns the JobService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import jobq
from jobq.api.auth import Authenticate, Authenticator, OpenApiGuard
from jobq.api.guards import RequestGuard, Rules
from jobq.api.openapi import install_openapi
from jobq.api.problems import install_problem_handlers, problem_response
from jobq.api.routes import jobs, monitoring, queues
from jobq.api.tasks import tasks
from jobq.api.workflows import workflows
from jobq.dashboard import install_dashboard
from jobq.service import JobService
from jobq.settings import Settings, load_settings

#: Largest request body accepted; a bigger one is a 413 problem before it is parsed.
MAX_BODY_BYTES = 1024 * 1024

DESCRIPTION = """\
A fault-tolerant, SQL-backed background job queue.

Submit jobs with `POST /jobs`, follow them with `GET /jobs/{id}`, watch the queues with
`GET /stats`. Every error is an RFC 9457 problem (`application/problem+json`).

Once an API key exists (`jobq keys create`), every route but `/healthz` and the docs needs
`Authorization: Bearer <token>`; a key sees only the jobs of its queues.
"""


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 problem, before the app runs.

    A declared Content-Length over the limit is refused without reading a byte. Any other body
    (chunked, or streamed without a length) is read here, up to the limit, before any route or
    dependency sees the request, so a route that never reads its body cannot be made to act on
    an oversized request either. What follows the limit is never buffered: after the 413,
    uvicorn discards the rest of the body and keeps the connection, so a client that sends
    its whole body before reading the answer still gets the 413 (closing instead would reset
    the connection under it). FastAPI's own ``max_body_size`` answers in plain text.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Request(scope).headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope)(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body ended: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(scope)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # http.disconnect, for whoever waits for it
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self, scope: Scope) -> ASGIApp:
        return problem_response(
            Request(scope), 413, detail=f"the request body is larger than {self.max_bytes} bytes"
        )


def create_app(settings: Settings | None = None, service: JobService | None = None) -> FastAPI:
    """Build the API. Nothing is read or connected here: that happens at startup.

    ``service``: use this JobService (the caller keeps ownership and closes it). Otherwise one
    is built at startup from ``settings``, or from the environment (``JOBQ_*``) when those are
    None too, and closed at shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = service is None
        svc = service if service is not None else JobService.from_settings(
            settings if settings is not None else load_settings()
        )
        app.state.service = svc
        app.state.request_rules = Rules(svc.settings.allowed_hosts, svc.settings.allowed_origins)
        app.state.auth = Authenticator(svc)
        await run_in_threadpool(app.state.auth.announce)
        try:
            yield
        finally:
            app.state.auth = None
            app.state.service = None
            if owned:
                svc.close()

    app = FastAPI(
        title="jobq",
        version=jobq.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # A redirect to the slash-less path would be built from the request's Host header:
        # a foreign name would come back as the place to go. /jobs/1/ is a 404 instead.
        redirect_slashes=False,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    # Outside BodyLimit, so that a request without a valid key is answered before its body.
    app.add_middleware(Authenticate, routers=(jobs, monitoring, tasks))
    app.add_middleware(OpenApiGuard)
    app.add_middleware(RequestGuard)  # added last, so it runs first: Host, Origin, framing
    install_problem_handlers(app)
    install_openapi(app)
    app.include_router(jobs)
    app.include_router(monitoring)
    app.include_router(queues)
    app.include_router(tasks)
    app.include_router(workflows)
    install_dashboard(app)  # /dashboard: HTML pages, their own session and CSRF checks
    return app
