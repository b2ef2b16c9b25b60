"""Serve the REST API with uvicorn (for `jobq api` and `jobq up`)."""

from __future__ import annotations

import logging
import os
import signal
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

    from jobq.api import protocol

    # Bounds on request heads, slow clients and connections (see jobq.api.protocol), whatever
    # parser is installed; here first, so that the open-files limit it may raise is inherited
    # by the processes of --processes N, which read the same limits from the environment.
    protocol.configure(settings)
    common: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Let in-flight requests finish on SIGTERM, but never hang a stop for long.
        timeout_graceful_shutdown=10,
        http="jobq.api.protocol:HttpProtocol",
        # No route speaks WebSocket: an upgrade request stays plain HTTP, under those bounds.
        ws="none",
    )
    if settings.api_processes == 1:
        uvicorn.run(create_app(settings), **common)
        return 0
    # Several processes on one socket (uvicorn's workers, which it restarts when one dies).
    # uvicorn's supervisor ends quietly when its children cannot start, so what would stop
    # them (the database, the task modules, the schema) is tried here first, once.
    from jobq.service import JobService

    try:
        JobService.from_settings(settings).close()
    except (JobqError, ImportError) as exc:
        print(f"jobq: cannot start the API: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, (ConfigError, ImportError)) else 1
    # Each child builds its app from the environment, so these settings go there first.
    os.environ.update(settings_environment(settings))
    os.environ[_SUPERVISOR_PID] = str(os.getpid())
    uvicorn.run("jobq.api.server:child_app", factory=True, workers=settings.api_processes,
                **common)
    return 0


#: The PID of `jobq api --processes N`'s supervisor, as its children see it.
_SUPERVISOR_PID = "_JOBQ_API_SUPERVISOR_PID"


def child_app() -> Any:
    """The app of one process of `jobq api --processes N`: its settings come from the
    environment (``settings_environment``), and it stops when the supervisor dies, even by
    SIGKILL, so that no orphan keeps serving the port the next supervisor needs."""
    from jobq.api import create_app

    _stop_with_parent()
    return create_app()


def _stop_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if str(os.getppid()) != os.environ.get(_SUPERVISOR_PID, str(os.getppid())):
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor died before prctl took


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
