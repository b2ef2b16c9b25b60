"""What a JSON value must be for jobq to store it on every backend.

PostgreSQL's JSONB and text types cannot hold U+0000 or lone surrogates, and neither backend
should see NaN, Infinity or values of absurd shape. The API, the CLI and the worker (for
results) all check with this one function, so bad input is refused up front and never half-way
through an insert.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JsonLimits:
    """How big a JSON value jobq stores may be. Every limit is inclusive.

    Why these numbers. A job's payload is a message, not a document store: large data belongs
    elsewhere and the payload carries a reference to it. The API already refuses bodies over
    1 MiB before parsing them; these limits bound the *shape*, and they also hold for the
    values that never pass the API (Python callers, ``jobq enqueue``, and the results that
    handlers return), so that every stored row stays small enough to claim, return and
    serialise quickly.

    - ``max_depth`` 64: far beyond any real payload, and well inside the C JSON parser's and
      Python's recursion limits, so neither jobq nor a consumer of the JSON ever recurses deep.
    - ``max_keys`` 1,000 per object and ``max_nodes`` 10,000 values in all (every object,
      array, string, number, boolean and null counts one): bounds the CPU time spent
      validating, storing and re-serialising one job (a 1 MiB body could otherwise carry some
      half a million tiny values), and wide objects are what makes JSONB slow to build.
    - ``max_string_chars`` 65,536 (64 Ki) per string, keys included: a long text belongs in
      object storage; one string cannot use up the whole budget by itself.
    - ``max_text_chars`` 1,048,576 (1 Mi) characters of strings and keys in total: the
      counterpart of the API's 1 MiB body limit for values that did not come over HTTP (a
      body within that limit always satisfies it, since every character costs at least one
      byte). With the other limits it bounds the JSON text of any accepted value to a few MiB.
    - ``max_int_digits`` 100: JSON numbers beyond IEEE doubles are not portable anyway, and
      Python refuses to print integers of more than 4,300 digits, which would make the
      insert's ``json.dumps`` fail half-way.
    """

    max_depth: int = 64
    max_keys: int = 1_000
    max_nodes: int = 10_000
    max_string_chars: int = 65_536
    max_text_chars: int = 1_048_576
    max_int_digits: int = 100


#: The limits that the API, the CLI, the Python API and the worker all use.
LIMITS = JsonLimits()

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


def check_json_value(value: Any, name: str = "payload", limits: JsonLimits = LIMITS) -> None:
    """Raise ValueError naming the first part of ``value`` that is not storable JSON.

    Storable: None, booleans, integers, finite floats, strings, lists and tuples (stored as
    arrays) and dicts with string keys, within ``limits``, without NUL characters or lone
    surrogates in any string or key. Walks iteratively and counts before it descends, so
    neither a hostile depth nor a hostile width costs more than the limits allow.
    """
    int_bound = 10**limits.max_int_digits
    nodes = 1
    text = 0
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if node is None or isinstance(node, bool):
            continue
        if isinstance(node, int):
            if not -int_bound < node < int_bound:
                raise ValueError(
                    f"{_where(name, path)}: integers may have at most "
                    f"{limits.max_int_digits} digits"
                )
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError(f"{_where(name, path)}: NaN and Infinity are not valid JSON numbers")
        elif isinstance(node, str):
            _check_text(node, "strings", name, path, limits)
            text += len(node)
        elif isinstance(node, (dict, list, tuple)):
            if len(path) + 1 > limits.max_depth:
                raise ValueError(
                    f"{_where(name, path)}: nested deeper than {limits.max_depth} levels of "
                    "arrays and objects"
                )
            nodes += len(node)
            if nodes > limits.max_nodes:
                raise ValueError(
                    f"{_where(name, ())}: more than {limits.max_nodes} values (objects, arrays, "
                    "strings, numbers, booleans and nulls) in all"
                )
            if isinstance(node, dict):
                if len(node) > limits.max_keys:
                    raise ValueError(
                        f"{_where(name, path)}: objects may have at most {limits.max_keys} keys"
                    )
                for key, item in node.items():
                    if not isinstance(key, str):
                        raise ValueError(f"{_where(name, path)}: object keys must be strings")
                    _check_text(key, "object keys", name, path, limits)
                    text += len(key)
                    stack.append((item, (*path, key)))
            else:
                stack.extend((item, (*path, i)) for i, item in enumerate(node))
        else:
            raise ValueError(f"{_where(name, path)}: {type(node).__name__} is not a JSON value")
        if text > limits.max_text_chars:
            raise ValueError(
                f"{_where(name, ())}: more than {limits.max_text_chars} characters of strings "
                "and object keys in all"
            )


def _check_text(
    value: str, what: str, name: str, path: tuple[str | int, ...], limits: JsonLimits
) -> None:
    if len(value) > limits.max_string_chars:
        raise ValueError(
            f"{_where(name, path)}: {what} may be at most {limits.max_string_chars} "
            "characters long"
        )
    why = text_problem(value)
    if why:
        raise ValueError(f"{_where(name, path)}: {what} {why}")


def storable_text(value: str) -> str:
    """``value`` with what PostgreSQL cannot store (NUL, lone surrogates) escaped."""
    return value.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")
