"""Typed payloads: a handler whose payload parameter is annotated with a pydantic model
(``def send(payload: Email)``) receives an instance of it.

The payload is checked when the job is submitted, not when it runs: ``JobService`` validates
it against the model before anything is stored (``InvalidPayload``, which the API answers
with a 422 naming each field), and stores the model's JSON form (defaults filled in, values
coerced), so what a worker reads back validates again. A stored payload that no longer fits
(the model changed under queued jobs) fails its job at once, without retries: another
attempt would meet the same model.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from jobq.errors import InvalidJob


class InvalidPayload(InvalidJob):
    """A payload its task's model refuses; ``errors`` holds each problem as (location within
    the payload, message), the first of which is also ``field`` and ``problem``."""

    def __init__(self, errors: list[tuple[tuple[str | int, ...], str]]) -> None:
        loc, msg = errors[0]
        super().__init__(".".join(["payload", *map(str, loc)]), msg)
        self.errors = errors


def payload_model(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model the handler's first parameter is annotated with, if any. String
    annotations (``from __future__ import annotations``) are resolved in the handler's
    module; one that cannot be resolved there (a name imported only for type checkers) is
    no model."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if not params or params[0].kind is params[0].VAR_POSITIONAL:
        return None
    annotation = params[0].annotation
    if isinstance(annotation, str):
        try:
            annotation = typing.get_type_hints(fn).get(params[0].name)
        except Exception:  # noqa: BLE001 - unresolvable: an annotation for readers only
            return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def checked(model: type[BaseModel] | None, payload: Any) -> Any:
    """``payload`` as it is stored: the model's JSON form of it (InvalidPayload when the
    model refuses it), or itself for a task without a model."""
    if model is None:
        return payload
    try:
        return model.model_validate(payload).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidPayload([(tuple(e["loc"]), e["msg"]) for e in exc.errors()]) from None


def parsed(model: type[BaseModel] | None, payload: Any) -> Any:
    """What the handler receives: an instance of its model, or the payload as stored."""
    return payload if model is None else model.model_validate(payload)


def schema(model: type[BaseModel] | None) -> dict[str, Any] | None:
    """The payload's JSON Schema, None for a task that takes any JSON value."""
    return None if model is None else model.model_json_schema()
