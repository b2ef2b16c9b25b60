"""The OpenAPI document as generated clients need it: what FastAPI cannot say from the routes.

FastAPI builds the document (``/openapi.json``) from the routes and models, once per app;
``install_openapi`` then corrects it, once, where FastAPI cannot say what the server does:

- **Problems.** The routes declare every error under ``application/problem+json`` by reference
  (``problems.problem_responses``), since FastAPI would put a response ``model`` under
  ``application/json``, which the server never sends for an error; FastAPI collects only the
  models named as ``model``, so the Problem schema and those it uses are added here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from jobq.api.models import Problem


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json`` and ``/docs``) return the corrected
    document, built once and kept in ``app.openapi_schema`` as FastAPI keeps its own."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)  # FastAPI's own build, which it keeps...
            app.openapi_schema = None  # ...but only the corrected document is kept
            _add_problem_schemas(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented hook


def _add_problem_schemas(document: dict[str, Any]) -> None:
    _, top = models_json_schema(
        [(Problem, "serialization")], ref_template="#/components/schemas/{model}"
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in top.get("$defs", {}).items():
        schemas.setdefault(name, schema)  # JobState, say, is there already, the same
