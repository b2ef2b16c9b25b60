"""The OpenAPI document as generated clients need it: what FastAPI cannot say from the routes.

FastAPI builds the document (``/openapi.json``) from the routes and models, once per app;
``install_openapi`` then corrects it, once, where FastAPI cannot say what the server does:

- **Problems.** The routes declare every error under ``application/problem+json`` by reference
  (``problems.problem_responses``), since FastAPI would put a response ``model`` under
  ``application/json``, which the server never sends for an error; FastAPI collects only the
  models named as ``model``, so the Problem schema and those it uses are added here.
- **Security, optional and stated once.** Whether a request needs a key depends on the
  database, not on the route, and it changes at run time: while no active key exists the API
  is open (on loopback) and takes every request; once one exists every route but
  ``/healthz`` needs ``Authorization: Bearer <token>`` (the first key closes an open API
  within seconds, revoking the last one opens it). A document built once cannot follow
  that, so it says what holds in both modes: a bearer token, or nothing (``{}``, the empty
  requirement), with the 401 declared for when nothing is not enough. It says it at the top
  level, ``/healthz`` opting out with ``security: []``, rather than on each operation:
  openapi-python-client takes any requirement of an operation's own as mandatory, and its
  functions then accept only an ``AuthenticatedClient``, whose token an open API never
  issued. openapi-generator's clients send the token when they are given one, either way.
- **Optional, not null.** FastAPI writes an optional parameter or body (``X | None = None``)
  as "X or null". A query string has no null: leaving the parameter out is how a client omits
  it, and openapi-generator typed such a parameter as ``Any`` (``state``, an enum, lost its
  values). An optional body is one a client may leave out (``required`` is false); declared
  nullable as well, generated clients sent the absent body of a query-form ``POST /jobs``
  as JSON, and openapi-python-client failed encoding it (its UNSET). The null alternative is
  dropped from both; the server still takes a JSON ``null`` body as no body. (Declaring the
  route's body without None, ``SkipJsonSchema[None]``, would make pydantic validate a real
  union and name each error twice, once per alternative.)
- **Typed tasks.** A path per task with a payload model (``jobq.api.tasks``), so that the
  document, which is built once the app has started, names the registered tasks.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from jobq.api.models import Problem
from jobq.api.tasks import typed_task_paths

_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_NULL = {"type": "null"}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json`` and ``/docs``) return the corrected
    document, built once and kept in ``app.openapi_schema`` as FastAPI keeps its own."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)  # FastAPI's own build, which it keeps...
            app.openapi_schema = None  # ...but only the corrected document is kept
            _add_problem_schemas(document)
            _optional_security(document)
            _not_null(document)
            service = getattr(app.state, "service", None)
            if service is None:
                return document  # not started: no tasks known yet, so not kept
            typed_task_paths(document, service.registry)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented hook


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        operation
        for item in document.get("paths", {}).values()
        for method, operation in item.items()
        if method in _METHODS
    ]


def _add_problem_schemas(document: dict[str, Any]) -> None:
    _, top = models_json_schema(
        [(Problem, "serialization")], ref_template="#/components/schemas/{model}"
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in top.get("$defs", {}).items():
        schemas.setdefault(name, schema)  # JobState, say, is there already, the same


def _optional_security(document: dict[str, Any]) -> None:
    schemes = document.get("components", {}).get("securitySchemes", {})
    if len(schemes) != 1:
        return  # the one scheme is the API key; anything else is not this module's to say
    key = {next(iter(schemes)): []}
    document["security"] = [key, {}]
    for operation in _operations(document):
        own = operation.pop("security", None)
        if own is None:
            operation["security"] = []  # a route without the key's dependency: always open
        elif own != [key]:
            operation["security"] = own


def _not_null(document: dict[str, Any]) -> None:
    for operation in _operations(document):
        for parameter in operation.get("parameters", []):
            parameter["schema"] = _without_null(parameter.get("schema", {}))
        body = operation.get("requestBody", {})
        if not body.get("required", False):
            for media in body.get("content", {}).values():
                media["schema"] = _without_null(media.get("schema", {}))


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its ``null`` alternative, when it is "one thing or null"."""
    variants = schema.get("anyOf")
    if not isinstance(variants, list) or len(variants) != 2 or _NULL not in variants:
        return schema
    kept = next(v for v in variants if v != _NULL)
    if "$ref" in kept:
        # Keywords beside a $ref are ignored by some generators; a parameter carries its
        # own description, and a body's title ("Body") says nothing.
        return kept
    return {**{k: v for k, v in schema.items() if k != "anyOf"}, **kept}
