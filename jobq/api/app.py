"""The FastAPI application: create_app() builds it; its lifespan owns the JobService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import jobq
from jobq.api.problems import install_problem_handlers, problem_response
from jobq.api.routes import jobs, monitoring
from jobq.service import JobService
from jobq.settings import Settings, load_settings

#: Largest request body accepted; a bigger one is a 413 problem before it is parsed.
MAX_BODY_BYTES = 1024 * 1024

DESCRIPTION = """\
A fault-tolerant, SQL-backed background job queue.

Submit jobs with `POST /jobs`, follow them with `GET /jobs/{id}`, watch the queues with
`GET /stats`. Every error is an RFC 9457 problem (`application/problem+json`).
"""


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a 413 problem.

    (FastAPI's own ``max_body_size`` answers a too-large Content-Length in plain text.)
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
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read; the problem handlers answer it.
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited, send)

    def _detail(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"

    def _too_large(self, scope: Scope) -> ASGIApp:
        return problem_response(Request(scope), 413, detail=self._detail())


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
        try:
            yield
        finally:
            app.state.service = None
            if owned:
                svc.close()

    app = FastAPI(
        title="jobq",
        version=jobq.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    install_problem_handlers(app)
    app.include_router(jobs)
    app.include_router(monitoring)
    return app
