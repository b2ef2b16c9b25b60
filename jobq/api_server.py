"""Serve the REST API with uvicorn (for `jobq api` and `jobq up`)."""

from __future__ import annotations

from jobq.settings import Settings


def serve_api(settings: Settings) -> int:
    import uvicorn

    from jobq.api import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Let in-flight requests finish on SIGTERM, but never hang a stop for long.
        timeout_graceful_shutdown=10,
    )
    return 0
