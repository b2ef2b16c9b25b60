"""Serve the REST API with uvicorn (for `jobq api` and `jobq up`)."""

from __future__ import annotations

import logging
import sys

from jobq.errors import ConfigError, JobqError
from jobq.settings import Settings

log = logging.getLogger("jobq.api")


def check_open_api(settings: Settings) -> None:
    """Refuse to serve an open API (no active key) on a non-loopback address.

    Raises ConfigError naming JOBQ_ALLOW_OPEN_API, unless that setting is on (then it warns);
    StoreUnavailable when the database cannot say whether keys exist.
    """
    from jobq.api.auth import is_loopback
    from jobq.service import JobService

    if is_loopback(settings.host):
        return
    service = JobService.from_settings(settings)
    try:
        configured = service.keys_configured()
    finally:
        service.close()
    if configured:
        return
    if settings.allow_open_api:
        log.warning(
            "serving an OPEN API (no API key exists) on %s because JOBQ_ALLOW_OPEN_API=true: "
            "anyone who can reach it can submit, read, cancel and retry jobs", settings.host,
        )
        return
    raise ConfigError(
        f"refusing to serve the API on {settings.host}: no API key exists, so it would be "
        "open to anyone who can reach that address. Create a key with `jobq keys create`, "
        "bind to 127.0.0.1 (JOBQ_HOST / --host), or set JOBQ_ALLOW_OPEN_API=true to serve "
        "it open anyway"
    )


def serve_api(settings: Settings) -> int:
    import uvicorn

    from jobq.api import create_app

    try:
        check_open_api(settings)
    except JobqError as exc:
        print(f"jobq: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, ConfigError) else 1

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Let in-flight requests finish on SIGTERM, but never hang a stop for long.
        timeout_graceful_shutdown=10,
    )
    return 0
