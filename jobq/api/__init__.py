"""The HTTP API of jobq: ``create_app(settings)`` returns a FastAPI application.

Also here: ``server`` (`jobq api`, with uvicorn) and ``supervisor`` (`jobq up` and
`jobq worker --processes N`). FastAPI is imported only when ``create_app`` is first asked for,
so that worker processes started by the supervisor do not load it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from jobq.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
