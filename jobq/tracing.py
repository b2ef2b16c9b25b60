"""OpenTelemetry, when it is installed (``pip install 'jobq[otel]'``): the trace of whoever
enqueued a job continues in the span of its run.

At enqueue (``JobService.enqueue``, ``enqueue_many`` and the REST routes) the current span's
W3C trace context is kept with the job (``jobq_jobs.trace_context``), as a small JSON carrier:
``{"traceparent": "00-<trace id>-<span id>-<flags>", "tracestate": "..."}``. A REST request
without a current span (an app that OpenTelemetry does not instrument) gives its
``traceparent`` and ``tracestate`` headers instead. The worker runs each job in a span
``jobq.run <task type>`` (kind CONSUMER) whose parent is that context; the span is current
while an ``async def`` handler runs, so the handler's own spans, and the jobs it enqueues,
are its children.

Spans go to the global TracerProvider (``opentelemetry.trace.set_tracer_provider``), or to
the one given to ``set_tracer_provider`` here; jobq configures no provider or exporter. Until
one is set, runs make no spans at all (a worker pays nothing per job for them).

Without OpenTelemetry every function here is a no-op (``ENABLED`` False): jobq runs the same,
and only a REST request's ``traceparent`` header, checked strictly, is kept.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from jobq.types import TRACE_CONTEXT_CHARS, Cancelled, ClaimedJob, Failure, Job, Outcome, Snoozed

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # jobq without the otel extra
    ENABLED = False
else:
    ENABLED = True
    _W3C = TraceContextTextMapPropagator()

log = logging.getLogger("jobq.tracing")

#: A W3C ``traceparent`` of version 00, as a header without OpenTelemetry must be.
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_ZEROS_TRACE, _ZEROS_SPAN = "0" * 32, "0" * 16

_provider: Any = None  # None: the global TracerProvider
_tracer: Any = None


def set_tracer_provider(provider: Any) -> None:
    """Send jobq's spans to ``provider`` (an OpenTelemetry TracerProvider) rather than to the
    global one; None: the global one again."""
    global _provider, _tracer
    _provider, _tracer = provider, None


def _spans_go_somewhere() -> bool:
    """A TracerProvider is set (here, or the global one): until then a run makes no span,
    which costs nothing."""
    return ENABLED and (_provider is not None or not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider))


def _get_tracer() -> Any:
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer("jobq", tracer_provider=_provider)
    return _tracer


# -- at enqueue -------------------------------------------------------------------------------


def current_context() -> str | None:
    """The current span's trace context, as jobs keep it; None without OpenTelemetry or
    without a valid current span."""
    if not ENABLED:
        return None
    return _serialised(None)


def current_headers() -> dict[str, str]:
    """The current span's W3C ``traceparent`` (and ``tracestate``) headers, for an HTTP
    request to jobq's API (``jobq.Client``); none without OpenTelemetry or a valid span."""
    kept = current_context()
    return _carrier(kept) if kept else {}


def context_from_headers(headers: Mapping[str, str]) -> str | None:
    """The trace context of an HTTP request's ``traceparent`` (and ``tracestate``) headers,
    as jobs keep it; None when it has none, or none that is valid. ``headers``: a mapping
    whose lookups ignore case (Starlette's). Never raises."""
    try:
        if ENABLED:
            # The configured propagator reads the headers (W3C by default); the context is
            # kept as W3C.
            return _serialised(propagate.extract(headers, context=Context()))
        value = headers.get("traceparent")
        if not isinstance(value, str) or not valid_traceparent(value):
            return None
        return _dumps({"traceparent": value})
    except Exception:  # noqa: BLE001 - a bad header is no trace context, never an error
        log.debug("ignoring the request's trace headers", exc_info=True)
        return None


def request_context(headers: Mapping[str, str]) -> str | None:
    """What a REST enqueue keeps: the current span's context (an instrumented app's request
    span), else the request's own ``traceparent`` header's."""
    return current_context() or context_from_headers(headers)


def valid_traceparent(value: str) -> bool:
    """``value`` is a W3C traceparent of the format of version 00, with ids that are not
    all zeros and a version other than ``ff`` (which the standard rules out)."""
    if not TRACEPARENT.fullmatch(value):
        return False
    version, trace_id, span_id, _flags = value.split("-")
    return version != "ff" and trace_id != _ZEROS_TRACE and span_id != _ZEROS_SPAN


def _dumps(carrier: Mapping[str, str]) -> str:
    return json.dumps(dict(carrier), separators=(",", ":"), sort_keys=True)


def _serialised(ctx: Any) -> str | None:
    """The W3C carrier of the span of ``ctx`` (None: the current context) as JSON; without
    its tracestate when the whole would not fit the column."""
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    if "traceparent" not in carrier:
        return None
    text = _dumps(carrier)
    if len(text) > TRACE_CONTEXT_CHARS:
        text = _dumps({"traceparent": carrier["traceparent"]})
    return text


# -- at run -----------------------------------------------------------------------------------


def _carrier(stored: str | None) -> dict[str, str]:
    """A stored trace context as a carrier: JSON (what jobq writes) or a bare traceparent."""
    if not stored:
        return {}
    if stored.startswith("{"):
        try:
            value = json.loads(stored)
        except ValueError:
            return {}
        if not isinstance(value, dict):
            return {}
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
    return {"traceparent": stored} if valid_traceparent(stored) else {}


def parent_context(stored: str | None) -> Any:
    """The OpenTelemetry Context of a job's stored trace context; an empty one (whose spans
    are roots) when it has none or none that is valid."""
    if not ENABLED:
        return None
    carrier = _carrier(stored)
    if not carrier:
        return Context()
    return _W3C.extract(carrier, context=Context())


class RunSpan:
    """The span of a job's run, told its outcome by ``ended``."""

    def __init__(self, span: Any = None) -> None:
        self.span = span
        self.outcome: Outcome | None = None

    def ended(self, outcome: Outcome) -> Outcome:
        """Record ``outcome`` on the span (an error status for a Failure); returns it."""
        self.outcome = outcome
        span = self.span
        if span is None or not span.is_recording():
            return outcome
        if isinstance(outcome, Failure):
            kind, sep, message = outcome.error.partition(": ")
            if not sep or not kind.isidentifier():
                kind, message = "Failure", outcome.error
            span.set_attribute("jobq.outcome", "error")
            span.add_event("exception", {
                "exception.type": kind, "exception.message": message,
                "exception.stacktrace": outcome.traceback,
            })
            span.set_status(Status(StatusCode.ERROR, outcome.error[:1000]))
        elif isinstance(outcome, Snoozed):
            span.set_attributes({"jobq.outcome": "snoozed", "jobq.snooze_seconds":
                                 float(outcome.seconds)})
        elif isinstance(outcome, Cancelled):
            span.set_attribute("jobq.outcome", "cancelled")
        else:
            span.set_attribute("jobq.outcome", "done")
        return outcome


@contextmanager
def run_span(job: Job, attempt: int | None = None) -> Iterator[RunSpan]:
    """A span ``jobq.run <task type>`` (kind CONSUMER) around a run of ``job`` (its attempt
    ``attempt``, default ``job.attempts``), current within the block, its parent the job's
    stored trace context (none: a root span). Give the outcome to the yielded ``ended``; a
    block left by an exception (the worker took the job away) has an error status. Without
    OpenTelemetry, or before a TracerProvider is set, there is no span."""
    if not _spans_go_somewhere():
        yield RunSpan()
        return
    parent = parent_context(job.trace_context)
    span = _get_tracer().start_span(f"jobq.run {job.task_type}", context=parent,
                                    kind=SpanKind.CONSUMER)
    if span.is_recording():
        span.set_attributes({
            "messaging.system": "jobq",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "jobq.job.id": job.id,
            "jobq.task_type": job.task_type,
            "jobq.attempt": job.attempts if attempt is None else attempt,
            "jobq.max_attempts": job.max_attempts,
        })
    run = RunSpan(span)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield run
    except BaseException as exc:
        if run.outcome is None and span.is_recording():
            if isinstance(exc, Exception):
                span.record_exception(exc)
            span.set_attribute("jobq.outcome", "interrupted")
            span.set_status(Status(StatusCode.ERROR, f"interrupted: {type(exc).__name__}"))
        raise
    finally:
        otel_context.detach(token)
        span.end()


async def traced(claimed: ClaimedJob, run: Awaitable[Outcome]) -> Outcome:
    """Await ``run`` (the claimed job's run) in its ``run_span``, and record its outcome."""
    if not _spans_go_somewhere():
        return await run
    with run_span(claimed.job, claimed.lease.attempt) as span:
        return span.ended(await run)
