"""The HTTP API of jobq: ``create_app(settings)`` returns a FastAPI application."""

from jobq.api.app import create_app

__all__ = ["create_app"]
