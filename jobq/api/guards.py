"""What every request must pass before anything else runs: the name it was sent to (Host),
the page it came from (Origin), and framing that means one thing only.

An API on loopback in open mode (no key) trusts whoever can reach it, and a web page in the
developer's browser can reach it: by a cross-site form or ``fetch`` (a ``text/plain`` POST
needs no CORS preflight), or by DNS rebinding, where the page's own name comes to resolve to
127.0.0.1 and the browser then treats the API as same-origin. So:

- **Host**: localhost and IP addresses are always accepted; any other name only if
  ``JOBQ_ALLOWED_HOSTS`` lists it. A rebinding page always sends its own name. (A request
  without Host, HTTP/1.0, was not sent by a browser.) 400 ``host-not-allowed``.
- **Origin**: a state-changing request (anything but GET, HEAD, OPTIONS) whose ``Origin`` is
  neither the API's own (the Host it was sent to) nor listed in ``JOBQ_ALLOWED_ORIGINS`` is
  refused, as is the opaque origin ``null`` and a ``Sec-Fetch-Site: cross-site`` without an
  Origin. Clients other than browsers send neither header. 403 ``origin-not-allowed``.
- **One Authorization header**: with two, which one decides would depend on the code that
  reads it. 400 ``ambiguous-request``.
- **A query string that is UTF-8**: decoded with replacement characters, ``payload=%FF``
  would be stored as something the client never sent. 422 ``validation-error``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes, urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from jobq.api.problems import problem_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_of(authority: str) -> str:
    """The host of a Host header or an origin's authority, without the port, lower-case;
    an IPv6 literal keeps its brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end != -1 else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class HostRule:
    """Which names in a Host header the API answers to (see the module's docstring)."""

    def __init__(self, allowed: Sequence[str]) -> None:
        names = {h.strip().lower() for h in allowed if h.strip()}
        self.any = "*" in names
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # ".example.com"
        self.exact = {n for n in names if not n.startswith("*")} | {"localhost"}

    def allows(self, host: str) -> bool:
        if self.any or host in self.exact or _is_address(host):
            return True
        return bool(self.suffixes) and host.endswith(self.suffixes)


class Rules:
    """The names and origins one app accepts, from its settings."""

    def __init__(self, allowed_hosts: Sequence[str] = (),
                 allowed_origins: Sequence[str] = ()) -> None:
        self.hosts = HostRule(allowed_hosts)
        self.origins = {o.strip().lower().rstrip("/") for o in allowed_origins if o.strip()}


#: Before the app has read its settings (its lifespan): only localhost and addresses.
STRICTEST = Rules()


class RequestGuard:
    """An ASGI middleware, outermost, so that it covers every path (the docs too). Its rules
    are the app's ``state.request_rules``, which the app's lifespan sets from its settings."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            rules = getattr(scope["app"].state, "request_rules", None) or STRICTEST
            refusal = _refusal(scope, rules)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refusal(scope: Scope, rules: Rules) -> ASGIApp | None:
    headers: dict[bytes, list[bytes]] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, []).append(value)
    request = Request(scope)
    host = host_of(_text(headers.get(b"host", [b""])[0]))
    if host and not rules.hosts.allows(host):
        return problem_response(
            request, 400, type_="host-not-allowed", title="Host not allowed",
            detail=f"this API does not answer to the name {host!r}; list it in "
            "JOBQ_ALLOWED_HOSTS to allow it",
        )
    if scope["method"] not in SAFE_METHODS and not _same_or_allowed_origin(headers, rules):
        return problem_response(
            request, 403, type_="origin-not-allowed", title="Origin not allowed",
            detail="a state-changing request from a web page of another origin is "
            "refused; list that origin in JOBQ_ALLOWED_ORIGINS to allow it",
        )
    if len(headers.get(b"authorization", ())) > 1:
        return problem_response(
            request, 400, type_="ambiguous-request", title="Ambiguous request",
            detail="send at most one Authorization header",
        )
    bad = _not_utf8_query_names(scope.get("query_string", b""))
    if bad:
        msg = "must be UTF-8 once percent-decoded"
        return problem_response(
            request, 422, type_="validation-error", title="Invalid request",
            detail="; ".join(f"{name} (query): {msg}" for name in bad),
            errors=[{"loc": ["query", name], "msg": msg, "type": "string_unicode"}
                    for name in bad],
        )
    return None


def _same_or_allowed_origin(headers: dict[bytes, list[bytes]], rules: Rules) -> bool:
    origins = headers.get(b"origin")
    if not origins:
        fetch_site = _text(headers.get(b"sec-fetch-site", [b""])[0]).strip().lower()
        return fetch_site != "cross-site"
    origin = _text(origins[0]).strip().lower().rstrip("/")
    if len(origins) > 1 or origin == "null":
        return False
    if origin in rules.origins:
        return True
    # The API's own origin: the page was served from the name and port this request was
    # sent to (the scheme is not compared: TLS may end at a proxy in front).
    parts = urlsplit(origin)
    own = _authority(_text(headers.get(b"host", [b""])[0]))
    return parts.scheme in ("http", "https") and bool(own) and _authority(
        parts.netloc) == own


def _authority(value: str) -> str:
    """host[:port] as compared between Origin and Host: lower-case, no default port."""
    value = value.strip().lower()
    for default in (":80", ":443"):
        value = value.removesuffix(default)
    return value


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")  # what HTTP headers are; never fails


def _not_utf8_query_names(query: bytes) -> list[str]:
    """The names of the query parameters whose name or value is not UTF-8 once decoded."""
    bad = []
    for pair in query.split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        name = unquote_to_bytes(raw_name.replace(b"+", b" "))
        value = unquote_to_bytes(raw_value.replace(b"+", b" "))
        try:
            name.decode("utf-8")
            value.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(name.decode("utf-8", "replace"))
    return bad
