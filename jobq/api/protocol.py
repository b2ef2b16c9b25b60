"""jobq's HTTP/1.1 protocol for uvicorn: uvicorn's own, with bounds on what a client may hold.

uvicorn bounds neither the request head (with httptools a large header costs time that grows
with the square of its size, on the one event loop) nor how long a client may take to send a
request, so a few slow or silent connections can hold memory and file descriptors forever.
This protocol adds, per connection:

- **Head size.** The request line and headers may take ``max_head_bytes``; the byte past it is
  never given to the parser, and the client gets a 431 problem at once.
- **Deadlines.** The head must be complete ``head_timeout`` seconds after the connection
  opens (or after its first byte, for later requests on a kept-alive connection), the body
  ``body_timeout`` seconds after the head. Past either, a 408 problem if no response has
  started, and the connection is closed. Idle kept-alive connections stay uvicorn's business
  (``timeout_keep_alive``).
- **A cap on connections per process.** The connection past ``max_connections`` is answered
  with a 503 problem and ``Retry-After`` before anything is read, and closed. uvicorn's
  ``limit_concurrency`` would first read the request (letting the slow connections it should
  shed hold their descriptors) and answers in plain text.

Refusals close "lingering": the answer is sent, the sending side shut, and what the client
still sends is read and dropped for at most ``LINGER_SECONDS``, so that a client busy sending
reads the answer rather than a connection reset.

It works over either parser uvicorn has (``HttpToolsProtocol`` when httptools is installed,
``H11Protocol`` otherwise): ``HttpProtocol`` is the one in use. The limits come from
``configure(settings)``, else from the ``JOBQ_*`` environment on first use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from jobq.api.problems import PROBLEM_JSON, RETRY_AFTER_SECONDS
from jobq.settings import Settings, load_settings

log = logging.getLogger("jobq.api")

#: Longest a refused connection is kept open to drain what its client still sends.
LINGER_SECONDS = 2.0

#: Descriptors an API process needs besides its clients' (listening socket, event loop, logs,
#: imports), on top of up to three per database connection (an SQLite file has its WAL and
#: shared-memory files too).
FD_RESERVE = 64

_HEAD, _BODY, _DONE = "head", "body", "done"


@dataclass(frozen=True)
class HttpLimits:
    max_head_bytes: int
    head_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_head_bytes=settings.api_max_header_bytes,
            head_timeout=settings.api_header_timeout_seconds,
            body_timeout=settings.api_body_timeout_seconds,
            max_connections=_connections_within_fd_limit(settings),
        )


def _connections_within_fd_limit(settings: Settings) -> int:
    """``settings.api_max_connections``, after raising this process's soft limit on open files
    to fit it where the hard limit allows; lowered (with a warning) where it does not, since
    past the descriptor limit the server stops accepting anyone."""
    wanted = settings.api_max_connections
    reserve = FD_RESERVE + 3 * (settings.db_pool_size + settings.db_max_overflow)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + reserve
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    allowed = max(1, soft - reserve)
    log.warning(
        "JOBQ_API_MAX_CONNECTIONS=%d does not fit the limit of %d open files (ulimit -n); "
        "serving at most %d connections per process", wanted, soft, allowed,
    )
    return allowed


_limits: HttpLimits | None = None


def configure(settings: Settings) -> None:
    """Set the limits of the connections this process accepts from now on."""
    global _limits
    _limits = HttpLimits.from_settings(settings)


def current_limits() -> HttpLimits:
    if _limits is None:
        configure(load_settings())
    assert _limits is not None
    return _limits


def _problem(status: int, reason: str, slug: str, title: str, detail: str,
             extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response carrying an RFC 9457 problem, closing the connection."""
    body = json.dumps({"type": f"urn:jobq:problem:{slug}", "title": title, "status": status,
                       "detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {reason}".encode(),
            b"content-type: " + PROBLEM_JSON.encode(),
            b"content-length: %d" % len(body),
            b"connection: close"]
    head += [name + b": " + value for name, value in extra_headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _Bounded:
    """What both protocols add; ``_phase`` is kept up to date by each parser's subclass."""

    # Provided by uvicorn's protocol.
    transport: asyncio.Transport
    connections: set[Any]
    cycle: Any
    flow: Any
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = current_limits()
        self._phase = _HEAD
        self._head_bytes = 0  # of the head being received
        self._head_clock: asyncio.TimerHandle | None = None
        self._body_clock: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        # Counted as a connection until it is closed, refused or not: the cap protects
        # descriptors, and a refused one holds one until its lingering close ends.
        if len(self.connections) > self.limits.max_connections:
            self._refuse(_problem(
                503, "Service Unavailable", "too-many-connections", "Too many connections",
                f"this server process has {self.limits.max_connections} connections open, "
                "its limit; try again later",
                ((b"retry-after", str(RETRY_AFTER_SECONDS).encode()),),
            ))
            return
        self._head_clock = self.loop.call_later(self.limits.head_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        for clock in (self._head_clock, self._body_clock, self._linger):
            if clock is not None:
                clock.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and dropped
        while data and not self.transport.is_closing():
            if self._phase == _BODY:
                piece, data = data, b""
            else:
                # Bytes outside a body belong to a head. A body's last read may also carry
                # the start of a pipelined request, counted from its next read only: the
                # limit may be passed by one read, never more.
                room = self.limits.max_head_bytes - self._head_bytes
                if room <= 0:
                    self._head_too_large()
                    return
                if self._head_clock is None:
                    self._head_clock = self.loop.call_later(
                        self.limits.head_timeout, self._head_expired)
                piece, data = data[:room], data[room:]
                self._head_bytes += len(piece)
            super().data_received(piece)  # type: ignore[misc]
            self._sync_phase()

    # -- phases ---------------------------------------------------------------------------

    def _sync_phase(self) -> None:
        """Bring ``_phase`` up to date after the parser ran (h11 reports it in its state)."""

    def _enter(self, phase: str) -> None:
        if phase == self._phase:
            return
        self._phase = phase
        if phase == _HEAD:
            return
        self._head_bytes = 0
        if self._head_clock is not None:
            self._head_clock.cancel()
            self._head_clock = None
        if self._body_clock is not None:
            self._body_clock.cancel()
            self._body_clock = None
        if phase == _BODY:
            self._body_clock = self.loop.call_later(self.limits.body_timeout, self._body_expired)

    # -- refusals -------------------------------------------------------------------------

    def _head_too_large(self) -> None:
        if self._busy():
            self.transport.close()  # an earlier request's answer is on its way: no room
            return
        self._refuse(_problem(
            431, "Request Header Fields Too Large", "request-head-too-large",
            "Request head too large",
            f"the request line and headers are larger than {self.limits.max_head_bytes} bytes",
        ))

    def _head_expired(self) -> None:
        self._head_clock = None
        if self._busy():
            # A pipelined head is late while an earlier request is being answered: end the
            # connection after that answer rather than cut it.
            self.cycle.keep_alive = False
            return
        self._refuse(_problem(
            408, "Request Timeout", "request-timeout", "Request timeout",
            f"the request line and headers did not arrive within "
            f"{self.limits.head_timeout:g} seconds",
        ))

    def _body_expired(self) -> None:
        self._body_clock = None
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self.transport.close()  # answered already (e.g. 413): just stop waiting
            return
        # The app waits for the body: tell it the client is gone, so it answers nothing.
        cycle.disconnected = True
        cycle.message_event.set()
        self._refuse(_problem(
            408, "Request Timeout", "request-timeout", "Request timeout",
            f"the request body did not arrive within {self.limits.body_timeout:g} seconds "
            "of its headers",
        ))

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, response: bytes) -> None:
        self._refused = True
        for clock in (self._head_clock, self._body_clock):
            if clock is not None:
                clock.cancel()
        self._head_clock = self._body_clock = None
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        self.transport.write(response)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()  # drain what the client still sends, whatever it is
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)


class BoundedH11Protocol(_Bounded, H11Protocol):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        # h11 refuses a head over its own buffer limit with uvicorn's plain-text 400: give it
        # room, so that ours answers first, with a problem.
        limit = current_limits().max_head_bytes + 1
        if (config.h11_max_incomplete_event_size or 0) < limit:
            config.h11_max_incomplete_event_size = limit
        super().__init__(config, *args, **kwargs)

    def _sync_phase(self) -> None:
        import h11

        state = self.conn.their_state
        self._enter(_HEAD if state is h11.IDLE else _BODY if state is h11.SEND_BODY else _DONE)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._refused:  # a pipelined request may have been parsed just now
            self._sync_phase()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn uses h11 too
    HttpProtocol: type[asyncio.Protocol] = BoundedH11Protocol
else:

    class BoundedHttpToolsProtocol(_Bounded, HttpToolsProtocol):
        # httptools tells where a message is through these callbacks, during data_received.
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._enter(_HEAD)

        def on_headers_complete(self) -> None:
            self._enter(_BODY)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._enter(_DONE)

    HttpProtocol = BoundedHttpToolsProtocol
