"""Serve the REST API with uvicorn (for `jobq api` and `jobq up`)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

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

    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Let in-flight requests finish on SIGTERM, but never hang a stop for long.
        timeout_graceful_shutdown=10,
    )
    if settings.api_processes == 1:
        uvicorn.run(create_app(settings), **common)
        return 0
    # Several processes on one socket (uvicorn's workers, which it restarts when one dies):
    # each child builds its app from the environment, so these settings go there first.
    # (Migrating at once from every child is safe: migrations take a lock.)
    os.environ.update(settings_environment(settings))
    uvicorn.run("jobq.api.app:create_app", factory=True, workers=settings.api_processes,
                **common)
    return 0


def settings_environment(settings: Settings) -> dict[str, str]:
    """``settings`` as the JOBQ_* variables that load them again (in a child process)."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"JOBQ_{name.upper()}"] = str(value)
    return env
