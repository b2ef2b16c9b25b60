"""What a JSON value must be for jobq to store it on every backend.

PostgreSQL's JSONB and text types cannot hold U+0000 or lone surrogates, and neither backend
should see NaN, Infinity or absurd nesting. The API, the CLI and the worker (for results) all
check with this one function, so bad input is refused up front and never half-way through an
insert.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Deepest nesting of arrays and objects a payload may have (the top level counts as 1).
MAX_PAYLOAD_DEPTH = 64


def _where(name: str, path: tuple[str | int, ...]) -> str:
    out = name
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # ASCII-escaped, so a bad key can be named without being repeated verbatim.
            key = json.dumps(part)
            out += f"[{key[:40] + '…' if len(key) > 40 else key}]"
    return out


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text by every backend, or None when it can."""
    if "\x00" in value:
        # PostgreSQL's text and JSONB types cannot hold U+0000.
        return "must not contain NUL (\\u0000) characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain lone surrogates (\\ud800-\\udfff) that are not valid Unicode"
    return None


def check_json_value(
    value: Any, max_depth: int = MAX_PAYLOAD_DEPTH, name: str = "payload"
) -> None:
    """Raise ValueError naming the first part of ``value`` that is not storable JSON.

    Walks iteratively, so a hostile nesting depth cannot exhaust the stack.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if node is None or isinstance(node, (bool, int)):
            continue
        if isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError(f"{_where(name, path)}: NaN and Infinity are not valid JSON numbers")
        elif isinstance(node, str):
            why = text_problem(node)
            if why:
                raise ValueError(f"{_where(name, path)}: strings {why}")
        elif isinstance(node, (dict, list, tuple)):
            if len(path) + 1 > max_depth:
                raise ValueError(
                    f"{_where(name, path)}: nested deeper than {max_depth} levels of arrays and objects"
                )
            if isinstance(node, dict):
                for key, item in node.items():
                    if not isinstance(key, str):
                        raise ValueError(f"{_where(name, path)}: object keys must be strings")
                    why = text_problem(key)
                    if why:
                        raise ValueError(f"{_where(name, path)}: object keys {why}")
                    stack.append((item, (*path, key)))
            else:
                stack.extend((item, (*path, i)) for i, item in enumerate(node))
        else:
            raise ValueError(f"{_where(name, path)}: {type(node).__name__} is not a JSON value")


def storable_text(value: str) -> str:
    """``value`` with what PostgreSQL cannot store (NUL, lone surrogates) escaped."""
    return value.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")
