"""``jobq.tracing`` by itself: what a trace context looks like stored, which headers count,
and that everything is a no-op without OpenTelemetry (``ENABLED`` False)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceState, set_span_in_context

from jobq import tracing
from jobq.errors import InvalidJob
from jobq.types import TRACE_CONTEXT_CHARS, Failure, Job, JobState, NewJob

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACER = TracerProvider().get_tracer("tests")


def _job(trace_context: str | None) -> Job:
    now = datetime.now(timezone.utc)
    return Job(id=7, task_type="t", payload=None, queue="q", priority=0, state=JobState.RUNNING,
               attempts=2, max_attempts=3, run_at=now, idempotency_key=None, worker_id="w",
               lease_token="x", lease_expires_at=now, result=None, last_error=None,
               created_at=now, started_at=now, finished_at=None, trace_context=trace_context)


def test_the_current_span_is_kept_as_a_w3c_carrier() -> None:
    assert tracing.current_context() is None  # no span
    with TRACER.start_as_current_span("s") as span:
        kept = tracing.current_context()
    assert kept is not None
    ctx = span.get_span_context()
    assert json.loads(kept) == {
        "traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
    parent = tracing.parent_context(kept)
    assert trace.get_current_span(parent).get_span_context().span_id == ctx.span_id


def test_a_long_tracestate_is_left_out_rather_than_overflowing_the_column() -> None:
    sc = SpanContext(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, is_remote=True,
                     trace_flags=1,
                     trace_state=TraceState([(f"k{i}", "v" * 200) for i in range(5)]))
    kept = tracing._serialised(set_span_in_context(NonRecordingSpan(sc)))
    assert kept == json.dumps({"traceparent": TRACEPARENT}, separators=(",", ":"))
    short = SpanContext(sc.trace_id, sc.span_id, True, 1, TraceState([("a", "b")]))
    kept = tracing._serialised(set_span_in_context(NonRecordingSpan(short)))
    assert kept is not None and len(kept) <= TRACE_CONTEXT_CHARS
    assert json.loads(kept) == {"traceparent": TRACEPARENT, "tracestate": "a=b"}


@pytest.mark.parametrize("value, ok", [
    (TRACEPARENT, True),
    (TRACEPARENT.upper(), False),
    ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", False),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", False),
    ("ff" + TRACEPARENT[2:], False),
    (TRACEPARENT + "-extra", False),
    (" " + TRACEPARENT, False),
    (TRACEPARENT + "\n", False),
    ("", False),
])
def test_a_traceparent_is_checked_strictly(value: str, ok: bool) -> None:
    assert tracing.valid_traceparent(value) is ok


@pytest.mark.parametrize("stored", [None, "", "{", "[1]", '{"traceparent": 5}', "nonsense",
                                    '{"traceparent": "00-zz"}'])
def test_a_stored_context_that_is_none_or_not_valid_gives_a_root(stored: str | None) -> None:
    ctx = tracing.parent_context(stored)
    assert not trace.get_current_span(ctx).get_span_context().is_valid


def test_a_bare_traceparent_is_a_parent_too() -> None:
    sc = trace.get_current_span(tracing.parent_context(TRACEPARENT)).get_span_context()
    assert (sc.trace_id, sc.span_id) == (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7)


def test_run_span_records_the_outcome_and_an_interruption() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        with tracing.run_span(_job(json.dumps({"traceparent": TRACEPARENT}))) as run:
            run.ended(Failure("not an identifier: x", "tb"))
        with pytest.raises(KeyboardInterrupt):
            with tracing.run_span(_job(None)):
                raise KeyboardInterrupt
    finally:
        tracing.set_tracer_provider(None)
    failed, interrupted = exporter.get_finished_spans()
    assert failed.attributes["jobq.attempt"] == 2 and failed.parent is not None
    assert failed.events[0].attributes["exception.type"] == "Failure"
    assert interrupted.status.description == "interrupted: KeyboardInterrupt"
    assert interrupted.attributes["jobq.outcome"] == "interrupted"
    assert interrupted.parent is None


def test_without_opentelemetry_it_is_all_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "ENABLED", False)
    with TRACER.start_as_current_span("s"):
        assert tracing.current_context() is None
        assert tracing.request_context({"traceparent": TRACEPARENT, "tracestate": "a=b"}) == (
            json.dumps({"traceparent": TRACEPARENT}, separators=(",", ":")))
    assert tracing.context_from_headers({"traceparent": TRACEPARENT.upper()}) is None
    assert tracing.context_from_headers({}) is None
    assert tracing.parent_context(TRACEPARENT) is None
    with tracing.run_span(_job(TRACEPARENT)) as run:
        failure = Failure("E: x", "")
        assert run.ended(failure) is failure


@pytest.mark.parametrize("bad", [5, "", "x" * (TRACE_CONTEXT_CHARS + 1), "a\x00b"])
def test_a_new_jobs_trace_context_is_checked(bad: object) -> None:
    with pytest.raises(InvalidJob) as err:
        NewJob("t", trace_context=bad)  # type: ignore[arg-type]
    assert err.value.field == "trace_context"
    assert NewJob("t", trace_context="x" * TRACE_CONTEXT_CHARS).trace_context


def test_before_a_tracer_provider_is_set_a_run_makes_no_span() -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("this process has a global TracerProvider")
    with tracing.run_span(_job(TRACEPARENT)) as run:
        assert run.span is None
        assert tracing.current_context() is None


def test_the_current_headers_are_the_spans_traceparent() -> None:
    assert tracing.current_headers() == {}
    with TRACER.start_as_current_span("s") as span:
        ctx = span.get_span_context()
        assert tracing.current_headers() == {
            "traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
