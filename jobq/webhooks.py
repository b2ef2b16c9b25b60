"""Completion webhooks: when a job with a ``callback_url`` becomes final, jobq POSTs what
became of it to that URL, signed, as a job of its own built-in task ``jobq.webhook``
(retried with backoff, so a receiver that is down loses nothing).

What is here:

- ``check_callback_url(url, allow_private)``: the checks at enqueue (InvalidJob naming
  ``callback_url``); ``check_callback(url, settings)`` adds that a secret is configured.
- ``webhook_job(...)`` / ``webhook_payload(...)``: the job (the payload) to enqueue, in the
  same transaction as the job's final state. The payload is sealed with the secret, so a
  ``jobq.webhook`` job that anyone else enqueued (through the API, say) is never sent: jobq
  signs only the bodies that jobq itself wrote.
- ``sign(secret, timestamp, body)`` and ``verify(secret, header, body)``: the
  ``X-Jobq-Signature`` header, ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``;
  ``verify`` is for receivers.
- ``deliver(payload, ctx)``: the handler of ``jobq.webhook`` (registered in
  jobq/builtin_tasks.py). httpx is imported there, on first delivery, not with this module.

The body, exactly (compact JSON, keys sorted, ASCII)::

    {"error":null|"...","finished_at":"2026-12-07T14:30:00.123456Z","job_id":42,
     "queue":"default","state":"failed","task_type":"send_email"}

``result`` (any JSON) in place of ``error`` when the state is ``done``; ``error`` is the job's
``last_error`` otherwise. A result too big to fit in the webhook job's payload is left out:
``"result":null,"result_omitted":true`` (read it with ``GET /jobs/{id}``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import re
import socket
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jobq.errors import InvalidJob
from jobq.jsonvalue import check_json_value
from jobq.retry import Backoff

if TYPE_CHECKING:
    from jobq.registry import JobContext
    from jobq.settings import Settings
    from jobq.types import NewJob

__all__ = [
    "TASK_NAME", "SIGNATURE_HEADER", "check_callback_url", "check_callback", "webhook_payload",
    "webhook_job", "body_bytes", "sign", "verify", "deliver", "configure",
    "WebhookUndeliverable", "WebhookRejected", "WebhookRefused", "WebhookRetry",
    "WebhookNotConfigured",
]

#: The built-in task that delivers webhooks.
TASK_NAME = "jobq.webhook"
SIGNATURE_HEADER = "X-Jobq-Signature"
MAX_URL_LENGTH = 2000
#: How old (or how far ahead) a signature's timestamp ``verify`` accepts by default.
DEFAULT_TOLERANCE_SECONDS = 300
#: Attempts of a delivery unless JOBQ_WEBHOOK_MAX_ATTEMPTS says otherwise (with the default
#: backoff, full jitter under 2 s doubling to 300 s: at most 3810 s of waiting, half on average).
DEFAULT_MAX_ATTEMPTS = 20

# -- Errors of a delivery ---------------------------------------------------------------------


class WebhookUndeliverable(Exception):
    """A delivery that trying again cannot help: the task's ``discard_on`` fails it at once
    (state ``failed``, kept as a dead letter; ``jobq retry`` sends it again)."""


class WebhookRejected(WebhookUndeliverable):
    """The receiver answered 4xx (but 408 or 429), or 3xx (redirects are not followed)."""


class WebhookRefused(WebhookUndeliverable):
    """jobq will not send it: the URL fails the checks, an address of the host is private
    (and JOBQ_WEBHOOK_ALLOW_PRIVATE is off), or the payload is not one jobq sealed."""


class WebhookRetry(Exception):
    """The receiver could not take it now (5xx, 408, 429, no connection, a timeout): retried
    with backoff while attempts are left."""


class WebhookNotConfigured(Exception):
    """This worker has no JOBQ_WEBHOOK_SECRET: retried (another worker, or this one once
    configured, may send it)."""


# -- The URL ----------------------------------------------------------------------------------

#: RFC 3986's characters: no space, control, non-ASCII, backslash, quote, <>{}|^`.
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_literal(host: str) -> Address | None:
    """``host`` as an IP address when it is one, in any form a resolver would take as one
    (``127.1``, ``0x7f000001`` and ``2130706433`` are 127.0.0.1 to ``getaddrinfo``)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded(address: Address) -> list[Address]:
    """The address, and the IPv4 addresses an IPv6 one carries (mapped, 6to4, Teredo,
    NAT64), which are where its packets end up."""
    found: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def address_problem(address: Address, allow_private: bool) -> str | None:
    """Why jobq will not send to ``address``, or None. Unspecified and multicast addresses
    are never receivers; private, loopback, link-local, reserved and other non-global ones
    only with ``allow_private``."""
    for a in _embedded(address):
        if a.is_unspecified:
            return f"{address} is an unspecified address"
        if a.is_multicast:
            return f"{address} is a multicast address"
        if allow_private:
            continue
        for what, bad in (("a loopback", a.is_loopback), ("a link-local", a.is_link_local),
                          ("a reserved", a.is_reserved), ("a private", a.is_private),
                          ("a non-public", not a.is_global),
                          ("a NAT64 local-use", a in _NAT64_LOCAL)):
            if bad:
                return (f"{address} is {what} address (JOBQ_WEBHOOK_ALLOW_PRIVATE allows "
                        "private addresses)")
    return None


def check_callback_url(url: str, allow_private: bool) -> str:
    """``url`` if jobq may POST to it, else InvalidJob("callback_url", why). http or https;
    a host; no user name or password; at most 2000 characters, all of RFC 3986 (no spaces,
    control or non-ASCII characters). A host that is an IP address (IPv6 too, and the IPv4
    it may carry) must be public unless ``allow_private``; so must ``localhost``. Host names
    are not resolved here: the delivery checks every address they resolve to."""
    def bad(why: str) -> InvalidJob:
        return InvalidJob("callback_url", why)

    if not isinstance(url, str):
        raise bad("must be a string")
    if len(url) > MAX_URL_LENGTH:
        raise bad(f"must be at most {MAX_URL_LENGTH} characters long")
    if not _URL_CHARS.fullmatch(url):
        raise bad("must be an ASCII URL without spaces or control characters (percent-encode "
                  "them; punycode the host)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not url[len(parts.scheme):].startswith(
            "://"):
        raise bad("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise bad("must not carry a user name or password")
    host = parts.hostname
    if not host:
        raise bad("needs a host")
    if port == 0:
        raise bad("port 0 is not a port to send to")
    address = _ip_literal(host)
    if address is not None:
        why = address_problem(address, allow_private)
        if why:
            raise bad(why)
    elif "%" in host or not _HOSTNAME.fullmatch(host) or len(host.rstrip(".")) > 253:
        raise bad(f"{host!r} is not a valid host name")
    elif not allow_private and (host.rstrip(".") == "localhost"
                                or host.rstrip(".").endswith(".localhost")):
        raise bad(f"{host} is this machine (JOBQ_WEBHOOK_ALLOW_PRIVATE allows it)")
    return url


def check_callback(url: str, settings: Settings) -> str:
    """The check at enqueue: ``check_callback_url`` with the settings' rule, and a
    JOBQ_WEBHOOK_SECRET to sign with (without one no delivery could be sent, so the job is
    refused rather than its webhook lost later)."""
    if not settings.webhook_secret:
        raise InvalidJob("callback_url", "webhooks need JOBQ_WEBHOOK_SECRET to be set")
    return check_callback_url(url, settings.webhook_allow_private)


# -- The payload of a delivery job ------------------------------------------------------------


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def body_bytes(body: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed): compact JSON, keys sorted, ASCII."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _seal_key(secret: str | bytes) -> bytes:
    return hmac.new(_bytes(secret), b"jobq-webhook-seal", hashlib.sha256).digest()


def _seal(secret: str | bytes, url: str, body: dict[str, Any]) -> str:
    message = url.encode() + b"\n" + body_bytes(body)
    return hmac.new(_seal_key(secret), message, hashlib.sha256).hexdigest()


def webhook_payload(
    *, url: str, job_id: int, state: str, task_type: str, queue: str,
    finished_at: datetime | str, result: Any = None, last_error: str | None = None,
    secret: str | bytes | None,
) -> dict[str, Any]:
    """The payload of the ``jobq.webhook`` job that tells ``url`` what became of job
    ``job_id``: ``{"url": ..., "body": {...}, "seal": "<hex>"}``. ``body`` is what is
    POSTed (see the module's docstring); ``result`` goes in it when ``state`` is ``done``,
    ``last_error`` (as ``error``) otherwise. ``seal`` is an HMAC of url and body with
    ``secret`` (JOBQ_WEBHOOK_SECRET): without it (no secret) the delivery fails at once,
    since nothing tells it from a payload that someone else wrote. Always fits in a job's
    payload: a result that would not is left out (``result_omitted``)."""
    body: dict[str, Any] = {"job_id": job_id, "state": state, "task_type": task_type,
                            "queue": queue, "finished_at": _iso(finished_at)}
    if state == "done":
        body["result"] = result
    else:
        body["error"] = last_error
    payload: dict[str, Any] = {"url": url, "body": body}
    try:
        check_json_value(payload)
    except ValueError:
        body["result"], body["result_omitted"] = None, True
    if secret:
        payload["seal"] = _seal(secret, url, body)
    return payload


def webhook_job(
    *, url: str, job_id: int, state: str, task_type: str, queue: str,
    finished_at: datetime | str, result: Any = None, last_error: str | None = None,
    settings: Settings, priority: int = 0,
) -> NewJob:
    """The ``jobq.webhook`` job to enqueue (in the transaction that makes job ``job_id``
    final), in ``queue`` (the job's own: its workers have the built-in task), with
    JOBQ_WEBHOOK_MAX_ATTEMPTS attempts."""
    from jobq.types import NewJob

    payload = webhook_payload(url=url, job_id=job_id, state=state, task_type=task_type,
                              queue=queue, finished_at=finished_at, result=result,
                              last_error=last_error, secret=settings.webhook_secret)
    return NewJob(TASK_NAME, payload, queue=queue, priority=priority,
                  max_attempts=settings.webhook_max_attempts)


# -- Signatures -------------------------------------------------------------------------------


def _bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Jobq-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256 of
    "<timestamp>." + body keyed with secret>``."""
    mac = hmac.new(_bytes(secret), f"{int(timestamp)}.".encode() + body, hashlib.sha256)
    return f"t={int(timestamp)},v1={mac.hexdigest()}"


def verify(secret: str | bytes, header: str | None, body: bytes,
           tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
           now: float | None = None) -> bool:
    """For receivers: whether ``header`` (the ``X-Jobq-Signature`` value) signs ``body``
    (the raw bytes received) with ``secret``, at a timestamp within ``tolerance_seconds`` of
    ``now`` (default: the clock), so that a captured request cannot be replayed later.
    Compares in constant time; a malformed header is False, never an error. Several ``v1=``
    are allowed (any one may match)."""
    if not isinstance(header, str) or not isinstance(body, (bytes, bytearray)):
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not re.fullmatch(r"[0-9]{1,12}", value):
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, bytes(body)).partition(",v1=")[2]
    ok = False
    for candidate in candidates:  # every one compared: no early exit
        ok |= hmac.compare_digest(expected.encode(), candidate.encode("ascii", "replace"))
    return ok


# -- Settings of the deliveries ---------------------------------------------------------------

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Deliveries in this process use ``settings`` (the worker calls this as it starts);
    unset, they read the JOBQ_* environment once."""
    global _settings
    _settings = settings


def current_settings() -> Settings:
    global _settings
    if _settings is None:
        from jobq.settings import load_settings

        _settings = load_settings()
    return _settings


def backoff(attempt: int) -> float:
    """The delay after failed delivery attempt ``attempt``: full jitter up to
    JOBQ_WEBHOOK_BACKOFF_BASE_SECONDS doubling to JOBQ_WEBHOOK_BACKOFF_CAP_SECONDS."""
    s = current_settings()
    return Backoff(s.webhook_backoff_base_seconds, s.webhook_backoff_cap_seconds).delay(attempt)


# -- The delivery -----------------------------------------------------------------------------


def _user_agent() -> str:
    try:
        from importlib.metadata import version

        return f"jobq-webhook/{version('jobq')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution
        import jobq

        return f"jobq-webhook/{jobq.__version__}"


def _unsealed(payload: Any, secret: str) -> tuple[str, dict[str, Any]]:
    """The url and body of a payload that jobq sealed with ``secret``; WebhookRefused
    otherwise."""
    if not isinstance(payload, dict) or not isinstance(payload.get("url"), str) or not (
            isinstance(payload.get("body"), dict)):
        raise WebhookRefused('the payload is not {"url": ..., "body": {...}, "seal": ...}')
    url, body, seal = payload["url"], payload["body"], payload.get("seal")
    if not isinstance(seal, str):
        raise WebhookRefused("the payload has no seal: the process that made the job final "
                             "had no JOBQ_WEBHOOK_SECRET, or it was not enqueued by jobq")
    if not hmac.compare_digest(_seal(secret, url, body).encode(), seal.encode("ascii",
                                                                              "replace")):
        raise WebhookRefused("the payload's seal does not match JOBQ_WEBHOOK_SECRET (it "
                             "changed since, or the job was not enqueued by jobq)")
    return url, body


async def _addresses(host: str, port: int, allow_private: bool) -> list[str]:
    """Where to connect for ``host``: the address itself, or every address it resolves to,
    each checked (WebhookRefused when any is refused: the resolver's answer may change, so
    the one checked is the one connected to)."""
    literal = _ip_literal(host)
    if literal is not None:
        found: Sequence[Address] = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise WebhookRetry(f"cannot resolve {host}: {exc}") from None
        found = []
        for info in infos:
            a = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
            if a not in found:
                found.append(a)
        if not found:
            raise WebhookRetry(f"{host} resolves to no address")
    for a in found:
        why = address_problem(a, allow_private)
        if why:
            raise WebhookRefused(f"{host} resolves to {why}" if literal is None else why)
    return [str(a) for a in found]


async def _read_some(response: Any, limit: int = 300) -> str:
    got = b""
    async for chunk in response.aiter_bytes():
        got += chunk
        if len(got) >= limit:
            break
    text = got[:limit].decode("utf-8", "replace")
    return " ".join(text.split())


def _tls_verify() -> Any:
    """What httpx checks certificates with: the system's defaults (certifi). A test hands
    in a context that trusts its own certificate authority."""
    return True


async def deliver(payload: Any, ctx: JobContext) -> dict[str, Any]:
    """The handler of ``jobq.webhook``: POST the body to the URL, signed. A 2xx ends it;
    5xx, 408, 429, a connection error or a timeout retry (WebhookRetry); any other answer
    fails it at once (WebhookRejected), as does a URL or address that is refused
    (WebhookRefused). Redirects are not followed, proxies not used."""
    settings = current_settings()
    secret = settings.webhook_secret
    if not secret:
        raise WebhookNotConfigured(f"worker {ctx.worker_id} has no JOBQ_WEBHOOK_SECRET to "
                                   "sign with")
    url, body = _unsealed(payload, secret)
    allow_private = settings.webhook_allow_private
    try:
        check_callback_url(url, allow_private)
    except InvalidJob as exc:
        raise WebhookRefused(str(exc)) from None
    timeout = settings.webhook_timeout_seconds
    try:
        return await asyncio.wait_for(_post(url, body, secret, allow_private, timeout, ctx),
                                      timeout)
    except asyncio.TimeoutError:
        raise WebhookRetry(f"no answer from {url} within {timeout:g} s") from None


async def _post(url: str, body: dict[str, Any], secret: str, allow_private: bool,
                timeout: float, ctx: JobContext) -> dict[str, Any]:
    import httpx

    target = httpx.URL(url)
    host = target.raw_host.decode("ascii")
    if host != (urlsplit(url).hostname or ""):
        # The two parsers disagree on where it goes: send it nowhere.
        raise WebhookRefused(f"callback_url: {url!r} is ambiguous about its host")
    port = target.port or (443 if target.scheme == "https" else 80)
    addresses = await _addresses(host, port, allow_private)
    data = body_bytes(body)
    headers = {
        "Host": target.netloc.decode("ascii"),
        "Content-Type": "application/json",
        "User-Agent": _user_agent(),
        SIGNATURE_HEADER: sign(secret, int(time.time()), data),
        "X-Jobq-Job-Id": str(body.get("job_id")),
        "X-Jobq-Delivery": str(ctx.job_id),
        "X-Jobq-Delivery-Attempt": str(ctx.attempt),
    }
    extensions = {"sni_hostname": host} if target.scheme == "https" else {}
    failures: list[str] = []
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                                 verify=_tls_verify()) as client:
        for address in addresses:
            # Connect to the address that was checked, naming the host in Host and in TLS
            # (whose certificate is checked against the host, not the address).
            request = client.build_request("POST", target.copy_with(host=address),
                                           content=data, headers=headers,
                                           extensions=extensions)
            try:
                response = await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{address}: {type(exc).__name__}: {exc}")
                continue
            except httpx.HTTPError as exc:
                raise WebhookRetry(f"{url}: {type(exc).__name__}: {exc}") from None
            try:
                status = response.status_code
                said = "" if 200 <= status < 300 else await _read_some(response)
            except httpx.HTTPError:
                said = ""
            finally:
                await response.aclose()
            answer = f"{url} answered {status}" + (f": {said}" if said else "")
            if 200 <= status < 300:
                return {"status": status, "address": address}
            if status >= 500 or status in (408, 429):
                raise WebhookRetry(answer)
            raise WebhookRejected(answer + " (not retried" + (
                "; redirects are not followed)" if 300 <= status < 400 else ")"))
    raise WebhookRetry(f"cannot connect to {url}: {'; '.join(failures)}")
