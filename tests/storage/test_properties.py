"""Property-based tests (Hypothesis): the validation layer, and the job state machine.

Validation: ``check_json_value`` against an oracle written independently of it (what survives
``json.dumps(allow_nan=False)``/``json.loads`` unchanged, holds no NUL or lone surrogate, and is
within the limits); ``NewJob`` against its rules, restated here; and the API's request models
against ``NewJob``: whatever the API accepts, ``NewJob`` accepts, and every job ``NewJob``
accepts can be submitted through the API.

State machine: a ``RuleBasedStateMachine`` drives a real store on every backend through enqueue,
claim, complete, fail, heartbeat, expire-and-rescue, release, cancel and retry, keeps a model
of what each job must be, and checks the invariants after every step.
"""

from __future__ import annotations

import json
import math
import shutil
import string
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pydantic
import pytest
from hypothesis import HealthCheck, Phase, assume, event, given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from jobq.api.models import EnqueueQuery, EnqueueRequest
from jobq.errors import InvalidJob, InvalidTransition
from jobq.jsonvalue import LIMITS, JsonLimits, check_json_value
from jobq.settings import load_settings
from jobq.store import SqlStore, open_store
from jobq.store.tables import attempts
from jobq.types import (
    MAX_DELAY_SECONDS,
    RUN_AT_RANGE,
    AttemptOutcome,
    JobState,
    Lease,
    NewJob,
)

# Pure validation: no I/O, so many examples are cheap.
FAST = hsettings(max_examples=400, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

# -- the oracle for JSON values -----------------------------------------------------------------

#: Small limits, so that random values often sit just inside or just beyond each of them.
SMALL = JsonLimits(max_depth=4, max_keys=4, max_nodes=16, max_string_chars=6,
                   max_text_chars=24, max_int_digits=4)

SPECIAL_CHARS = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ufffd", "\uffff", "é",
                 "𝄞", "\n", '"', "\\", "/"]
texts = st.text(st.one_of(st.characters(), st.sampled_from(SPECIAL_CHARS)), max_size=9)
edge_ints = st.sampled_from([9_999, 10_000, -9_999, -10_000, 10**100 - 1, 10**100,
                             -(10**100), 10**4299, 2**63, -(2**63) - 1])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), edge_ints,
    st.floats(),  # NaN, ±Infinity, -0.0, subnormals
    texts,
)
not_json = st.one_of(
    st.binary(max_size=3), st.frozensets(st.integers(), max_size=2), st.complex_numbers(),
    st.just(object()), st.datetimes(), st.decimals(allow_nan=False),
)
keys = st.one_of(texts, texts, st.integers(), st.none(), st.booleans(), st.floats())
values = st.recursive(
    st.one_of(scalars, scalars, scalars, not_json),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(keys, inner, max_size=6),
    ),
    max_leaves=30,
)


def _plain(value: Any) -> Any:
    """What the value reads as after a JSON round trip if nothing is lost: tuples are arrays."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _round_trips(value: Any) -> bool:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return bool(json.loads(text) == _plain(value))


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                yield k
            yield from _texts(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _texts(v)


def _unicode_clean(value: Any) -> bool:
    for text in _texts(value):
        if "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            return False
    return True


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, (list, tuple)):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _nodes(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_nodes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return 1 + sum(_nodes(v) for v in value)
    return 1


def _widest(value: Any) -> int:
    if isinstance(value, dict):
        return max([len(value), *(_widest(v) for v in value.values())])
    if isinstance(value, (list, tuple)):
        return max((_widest(v) for v in value), default=0)
    return 0


def _ints(value: Any) -> Iterator[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _ints(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _ints(v)


def _within(value: Any, limits: JsonLimits) -> bool:
    texts_ = list(_texts(value))
    return (
        _depth(value) <= limits.max_depth
        and _nodes(value) <= limits.max_nodes
        and _widest(value) <= limits.max_keys
        and all(len(t) <= limits.max_string_chars for t in texts_)
        and sum(map(len, texts_)) <= limits.max_text_chars
        and all(len(str(abs(n))) <= limits.max_int_digits for n in _ints(value))
    )


def storable(value: Any, limits: JsonLimits = LIMITS) -> bool:
    """The oracle: what ``check_json_value`` must accept, and all it may accept."""
    return _round_trips(value) and _unicode_clean(value) and _within(value, limits)


def _accepts(value: Any, limits: JsonLimits = LIMITS, name: str = "payload") -> bool:
    try:
        check_json_value(value, name=name, limits=limits)
    except ValueError as exc:
        assert str(exc).startswith(name), exc  # the refusal names where
        return False
    return True


# -- check_json_value ---------------------------------------------------------------------------


@FAST
@given(values)
def test_check_json_value_accepts_exactly_storable_values_small_limits(value: Any) -> None:
    note(f"oracle: round trip {_round_trips(value)}, unicode {_unicode_clean(value)}")
    accepted = _accepts(value, SMALL)
    event("accepted" if accepted else "refused")
    assert accepted == storable(value, SMALL)


@FAST
@given(values)
def test_check_json_value_accepts_exactly_storable_values(value: Any) -> None:
    accepted = _accepts(value, name="result")
    event("accepted" if accepted else "refused")
    assert accepted == storable(value)


@FAST
@given(st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False,
              allow_infinity=False), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=40,
))
def test_everything_json_loads_can_produce_is_accepted_within_the_limits(value: Any) -> None:
    # Anything a JSON parser produces, NaN and surrogates aside, is storable when small enough.
    assume(_unicode_clean(value) and _within(value, SMALL))
    assert _accepts(value, SMALL)
    assert _accepts(json.loads(json.dumps(value)), SMALL)


@pytest.mark.parametrize("limit", ["max_depth", "max_keys", "max_nodes", "max_string_chars",
                                   "max_text_chars", "max_int_digits"])
def test_each_limit_is_inclusive(limit: str) -> None:
    """At each limit: accepted; one beyond: refused, with a message naming the limit."""
    lim = SMALL
    at, over = {
        "max_depth": ([[[[]]]], [[[[[]]]]]),
        "max_keys": ({"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}),
        "max_nodes": ([0] * 15, [0] * 16),
        "max_string_chars": ("abcdef", "abcdefg"),
        "max_text_chars": (["abcdef"] * 4, ["abcdef"] * 4 + ["x"]),
        "max_int_digits": ([9999, -9999], [10000]),
    }[limit]
    assert storable(at, lim) and not storable(over, lim)
    check_json_value(at, limits=lim)
    with pytest.raises(ValueError, match=str(getattr(lim, limit))):
        check_json_value(over, limits=lim)


def test_default_limits_are_the_documented_ones() -> None:
    assert LIMITS == JsonLimits(max_depth=64, max_keys=1_000, max_nodes=10_000,
                                max_string_chars=65_536, max_text_chars=1_048_576,
                                max_int_digits=100)


def test_a_hostile_width_is_refused_without_walking_it() -> None:
    import time

    wide = list(range(5_000_000))
    started = time.perf_counter()
    with pytest.raises(ValueError, match="10000 values"):
        check_json_value(wide)
    assert time.perf_counter() - started < 0.5
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="deeper"):
        check_json_value(cyclic)


# -- NewJob -------------------------------------------------------------------------------------

NAME_CHARS = string.ascii_letters + string.digits + "_.:-"
valid_names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_letters + string.digits),
    st.text(NAME_CHARS, max_size=127),
)
any_names = st.one_of(valid_names, st.text(max_size=130), st.none(), st.integers(),
                      st.just("a" * 129), st.just("a" * 128), st.just("ok\n"))
ranged_ints = st.one_of(st.integers(-1_100, 1_100), st.integers(), st.booleans(),
                        st.floats(allow_nan=True), st.none(), st.text(max_size=3))
utc_times = st.datetimes(timezones=st.just(timezone.utc))
times = st.one_of(
    st.none(),
    utc_times,
    st.datetimes(),  # naive: UTC
    st.datetimes(timezones=st.sampled_from(
        [timezone(timedelta(hours=h)) for h in (-23, -5, 0, 5, 14)])),
    st.sampled_from([*RUN_AT_RANGE, RUN_AT_RANGE[0] - timedelta(microseconds=1),
                     RUN_AT_RANGE[1] + timedelta(microseconds=1)]),
    st.text(max_size=3),
)
delays = st.one_of(st.none(), st.floats(), st.integers(-10, MAX_DELAY_SECONDS + 10),
                   st.sampled_from([0, MAX_DELAY_SECONDS, MAX_DELAY_SECONDS + 1e-6]),
                   st.booleans(), st.text(max_size=2))
idem_keys = st.one_of(st.none(), texts, st.text(min_size=250, max_size=260), st.integers())
payloads = st.one_of(values, st.just(None))


def _name_ok(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 128
        and value[0] in string.ascii_letters + string.digits
        and all(c in NAME_CHARS for c in value)
    )


def _int_ok(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _run_at_ok(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, datetime):
        return False
    try:
        utc = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else (
            value.astimezone(timezone.utc))
    except OverflowError:
        return False
    return RUN_AT_RANGE[0] <= utc <= RUN_AT_RANGE[1]


def _delay_ok(value: Any, run_at: Any) -> bool:
    if value is None:
        return True
    return (
        run_at is None
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= MAX_DELAY_SECONDS
    )


def _key_ok(value: Any) -> bool:
    return value is None or (
        isinstance(value, str) and 1 <= len(value) <= 255 and _unicode_clean(value)
    )


def new_job_problems(kw: dict[str, Any]) -> set[str]:
    """The fields of ``kw`` that break NewJob's rules, restated from its documentation."""
    bad = set()
    for name in ("task_type", "queue"):
        if not _name_ok(kw[name]):
            bad.add(name)
    if not _int_ok(kw["priority"], -1000, 1000):
        bad.add("priority")
    if not _int_ok(kw["max_attempts"], 1, 1000):
        bad.add("max_attempts")
    if not _run_at_ok(kw["run_at"]):
        bad.add("run_at")
    if not _delay_ok(kw["delay_seconds"], kw["run_at"]):
        bad.add("delay_seconds")
    if not _key_ok(kw["idempotency_key"]):
        bad.add("idempotency_key")
    if not storable(kw["payload"]):
        bad.add("payload")
    return bad


clean_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                     max_size=8)
json_payloads = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
              st.floats(allow_nan=False, allow_infinity=False), clean_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(clean_text, inner, max_size=4)),
    max_leaves=20,
)
valid_times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.datetimes(min_value=datetime(1, 1, 3), max_value=datetime(9999, 12, 29),
                 timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-7)),
                                            timezone(timedelta(hours=13, minutes=45))])),
)
def _valid_or(valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> Any:
    """Mostly valid (7 in 8), so that a job often breaks exactly one rule, at its edge."""
    return st.integers(0, 7).flatmap(lambda i: valid if i else anything)


new_job_kwargs = st.fixed_dictionaries({
    "task_type": _valid_or(valid_names, any_names),
    "queue": _valid_or(valid_names, any_names),
    "priority": _valid_or(st.integers(-1000, 1000), ranged_ints),
    "max_attempts": _valid_or(st.integers(1, 1000), ranged_ints),
    "run_at": _valid_or(st.none(), times),
    "delay_seconds": _valid_or(st.none(), delays),
    "idempotency_key": _valid_or(st.none() | st.text(min_size=1, max_size=20), idem_keys),
    "payload": _valid_or(json_payloads, payloads),
})


@FAST
@given(new_job_kwargs)
def test_new_job_accepts_exactly_what_its_rules_allow(kw: dict[str, Any]) -> None:
    bad = new_job_problems(kw)
    note(f"broken rules: {bad}")
    event(f"broken rules: {len(bad)}")
    try:
        NewJob(**kw)
    except InvalidJob as exc:
        assert bad, f"NewJob refused a valid job: {exc}"
        assert exc.field in bad, (exc.field, bad)  # it names a field that is at fault
    else:
        assert not bad, f"NewJob accepted a job that breaks {bad}"


# -- the API's request models agree with NewJob -------------------------------------------------

iso_times = st.one_of(
    utc_times.map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.datetimes().map(datetime.isoformat),
    times.filter(lambda t: isinstance(t, datetime)).map(datetime.isoformat),
    st.sampled_from(["9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00+00:30",
                     "2030-02-30T00:00:00Z", "2030-01-01", "tomorrow", ""]),
    st.integers(0, 2 * 10**12),
)
json_junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts,
                      st.lists(st.integers(), max_size=2))
body_fields = st.fixed_dictionaries(
    {"task_type": _valid_or(valid_names, any_names)},
    optional={
        "payload": _valid_or(json_payloads, payloads),
        "queue": _valid_or(valid_names, any_names),
        "priority": _valid_or(st.integers(-1000, 1000), json_junk | ranged_ints),
        "max_attempts": _valid_or(st.integers(1, 1000), json_junk | ranged_ints),
        "run_at": _valid_or(iso_times, json_junk),
        "delay_seconds": _valid_or(st.floats(0, MAX_DELAY_SECONDS), json_junk | delays),
        "idempotency_key": _valid_or(st.text(min_size=1, max_size=20), idem_keys),
        "bogus": json_junk,
    },
)


def _as_new_job(spec: EnqueueRequest | EnqueueQuery) -> NewJob:
    # max_attempts None is filled in by the service (the task's default, or the setting's).
    return NewJob(
        task_type=spec.task_type, payload=spec.payload, queue=spec.queue,
        priority=spec.priority,
        max_attempts=spec.max_attempts if spec.max_attempts is not None else 3,
        run_at=spec.run_at, delay_seconds=spec.delay_seconds,
        idempotency_key=spec.idempotency_key,
    )


@FAST
@given(body_fields)
def test_whatever_the_json_body_model_accepts_new_job_accepts_but_for_the_payload(
    body: dict[str, Any],
) -> None:
    """The body model checks every field but the payload, whose checks are NewJob's alone
    (the route turns NewJob's refusal into the same 422): so NewJob accepts every job the
    model accepts, unless it is the payload it refuses."""
    try:
        spec = EnqueueRequest.model_validate(body)
    except pydantic.ValidationError:
        event("refused by the model")
        return
    event("accepted by the model")
    note(repr(spec))
    assert "bogus" not in body  # unknown fields are refused
    try:
        _as_new_job(spec)
    except InvalidJob as exc:
        assert exc.field == "payload", exc
        event("payload refused by NewJob")


@FAST
@given(body_fields.map(lambda b: {k: v if isinstance(v, str) else json.dumps(v, default=str)
                                  for k, v in b.items() if v is not None and k != "payload"}
                                 | ({"payload": b["payload"]} if isinstance(b.get("payload"), str)
                                    else {})))
def test_whatever_the_query_model_accepts_new_job_accepts(params: dict[str, str]) -> None:
    try:
        spec = EnqueueQuery.model_validate(params)
    except pydantic.ValidationError:
        return
    assert "bogus" not in params
    if spec.task_type is not None:
        _as_new_job(spec)


valid_new_jobs = st.fixed_dictionaries({
    "task_type": valid_names,
    "queue": valid_names,
    "priority": st.integers(-1000, 1000),
    "max_attempts": st.integers(1, 1000),
    "idempotency_key": st.none() | st.text(st.characters(exclude_characters="\x00",
                                                         exclude_categories=["Cs"]),
                                           min_size=1, max_size=255),
    "payload": json_payloads,
}).flatmap(lambda kw: st.one_of(
    st.just({**kw, "run_at": None, "delay_seconds": None}),
    valid_times.map(lambda t: {**kw, "run_at": t, "delay_seconds": None}),
    st.one_of(st.integers(0, MAX_DELAY_SECONDS), st.floats(0, MAX_DELAY_SECONDS)).map(
        lambda d: {**kw, "run_at": None, "delay_seconds": d}),
))


@FAST
@given(valid_new_jobs)
def test_every_job_new_job_accepts_can_be_submitted_as_json(kw: dict[str, Any]) -> None:
    assert not new_job_problems(kw)
    body = {k: v for k, v in kw.items() if v is not None}
    if isinstance(kw["run_at"], datetime):
        body["run_at"] = kw["run_at"].isoformat()
    body = json.loads(json.dumps(_plain(body)))  # what a client would send
    spec = EnqueueRequest.model_validate(body)
    job = NewJob(**kw)
    again = _as_new_job(spec)
    assert (again.task_type, again.queue, again.priority, again.idempotency_key) == (
        job.task_type, job.queue, job.priority, job.idempotency_key)
    assert again.payload == _plain(job.payload)
    if job.run_at is not None:
        naive_utc = job.run_at.tzinfo is None
        assert again.run_at == (job.run_at.replace(tzinfo=timezone.utc) if naive_utc
                                else job.run_at)
    assert again.delay_seconds == job.delay_seconds


# -- the job state machine, on a real store -----------------------------------------------------

WORKERS = ("w1", "w2")
QUEUES = ("default", "other")
#: Few attempts, so that failing and rescuing often spend the last one (→ failed, → retry).
ATTEMPTS = st.sampled_from([1, 1, 2, 3])


@dataclass
class Expected:
    """What the model says a job must be."""

    queue: str
    priority: int
    max_attempts: int
    state: str = "pending"
    attempts: int = 0
    outcomes: list[str] = field(default_factory=list)  # of each attempt, oldest first
    numbers: list[int] = field(default_factory=list)  # each attempt's number
    done_by: str | None = None  # the worker whose attempt succeeded


class JobLifecycle(RuleBasedStateMachine):
    """Every transition of a job, against a real store, checked against a model after each step.

    Subclasses say how each example gets a clean database of their backend (``fresh_store``).
    """

    #: How often each interesting path was taken, over all examples of a run.
    paths: Counter[str] = Counter()  # noqa: RUF012 - reset by the test, shared on purpose

    leases = Bundle("leases")  # the current claim of a running job
    lost = Bundle("lost")  # claims that were lost: every write with one must be refused

    def __init__(self) -> None:
        super().__init__()
        self.store = self.fresh_store()
        self.jobs: dict[int, Expected] = {}
        self.held: dict[int, tuple[str, Lease]] = {}  # job -> (worker, lease) while running
        self.expired: set[int] = set()  # running jobs whose lease has run out

    # -- set-up --------------------------------------------------------------------------------

    def fresh_store(self) -> SqlStore:
        raise NotImplementedError

    def teardown(self) -> None:
        self.store.dispose()

    # -- helpers -------------------------------------------------------------------------------

    def _pick(self, data: st.DataObject, states: tuple[str, ...], label: str) -> int:
        """A job, usually one in ``states`` (where the move applies), sometimes any job."""
        fitting = sorted(i for i, j in self.jobs.items() if j.state in states)
        if fitting and data.draw(st.integers(0, 3), label=f"{label}: fitting job") > 0:
            return data.draw(st.sampled_from(fitting), label=label)
        return data.draw(st.sampled_from(sorted(self.jobs)), label=label)

    def took(self, path: str) -> None:
        self.paths[path] += 1

    def _lose(self, job_id: int) -> Lease:
        _, lease = self.held.pop(job_id)
        self.expired.discard(job_id)
        return lease

    # -- rules ---------------------------------------------------------------------------------

    @initialize(first=st.lists(st.tuples(st.sampled_from(QUEUES), st.integers(-1, 1),
                                         ATTEMPTS), min_size=2, max_size=6))
    def start_with_a_few_jobs(self, first: list[tuple[str, int, int]]) -> None:
        assert self.store.list_jobs(limit=10).items == []  # every example starts empty
        for queue, priority, max_attempts in first:
            self.enqueue(queue, priority, max_attempts)

    @rule(queue=st.sampled_from(QUEUES), priority=st.integers(-1, 1), max_attempts=ATTEMPTS)
    def enqueue(self, queue: str, priority: int, max_attempts: int) -> None:
        # Every job gets its own priority (a band from the draw, then the job's rank): the jobs
        # a claim takes then follow from the model alone, never from ties between timestamps,
        # so a failing run replays exactly.
        priority = priority * 100 + len(self.jobs)
        result = self.store.enqueue(NewJob(task_type="echo", payload={"n": len(self.jobs)},
                                           queue=queue, priority=priority,
                                           max_attempts=max_attempts))
        assert result.created and result.job.state is JobState.PENDING
        assert result.job.id not in self.jobs
        self.jobs[result.job.id] = Expected(queue, priority, max_attempts)

    @rule(target=leases, worker=st.sampled_from(WORKERS),
          queues=st.sampled_from([("default",), ("other",), QUEUES]),
          limit=st.integers(0, 4), expire=st.booleans())
    def claim(self, worker: str, queues: tuple[str, ...], limit: int, expire: bool) -> Any:
        pending = {i for i, j in self.jobs.items() if j.state == "pending" and j.queue in queues}
        # A negative lease has expired when it is granted (the database computes now - 1 s):
        # a dead worker's claim, without sleeping.
        claimed = self.store.claim(worker, list(queues), limit, -1.0 if expire else 30.0)
        assert len(claimed) <= limit  # invariant 6: never more than the free slots
        assert len(claimed) == min(limit, len(pending))
        if len(pending) > limit:
            self.took("claim limited by its limit")
        ids = [c.job.id for c in claimed]
        # Highest priority first, and priorities are distinct: exactly the top ``limit``.
        by_priority = sorted(pending, key=lambda i: -self.jobs[i].priority)
        assert ids == by_priority[:limit]
        for c in claimed:
            job = self.jobs[c.job.id]
            job.state, job.attempts = "running", job.attempts + 1
            job.outcomes.append("running")
            job.numbers.append(job.attempts)
            assert c.lease.attempt == job.attempts <= c.lease.max_attempts == job.max_attempts
            assert c.job.worker_id == worker and c.job.lease_token == c.lease.token
            self.held[c.job.id] = (worker, c.lease)
            if expire:
                self.expired.add(c.job.id)
        return multiple(*(c.lease for c in claimed))

    # complete, fail and release use up the claim: afterwards it is a lost one. A claim that was
    # lost meanwhile (cancelled, rescued) is already in ``lost``; it goes there again, harmlessly.

    @rule(target=lost, lease=consumes(leases), result=st.integers())
    def complete(self, lease: Lease, result: int) -> Any:
        if self.held.get(lease.job_id, (None, None))[1] != lease:
            return lease
        worker = self.held[lease.job_id][0]
        assert self.store.complete(lease, {"r": result}) is True
        self._lose(lease.job_id)
        job = self.jobs[lease.job_id]
        job.state, job.outcomes[-1], job.done_by = "done", "done", worker
        return lease

    @rule(target=lost, lease=consumes(leases))
    def fail(self, lease: Lease) -> Any:
        if self.held.get(lease.job_id, (None, None))[1] != lease:
            return lease
        state = self.store.fail(lease, "boom", "Traceback: boom", 0)
        self._lose(lease.job_id)
        job = self.jobs[lease.job_id]
        expected = "failed" if job.attempts >= job.max_attempts else "pending"
        assert state is not None and state.value == expected
        job.state, job.outcomes[-1] = expected, "error"
        self.took(f"fail -> {expected}")
        return lease

    @rule(target=lost, lease=consumes(leases))
    def release(self, lease: Lease) -> Any:
        if self.held.get(lease.job_id, (None, None))[1] != lease:
            return lease
        assert self.store.release([lease]) == 1
        self._lose(lease.job_id)
        job = self.jobs[lease.job_id]
        job.state, job.attempts, job.outcomes[-1] = "pending", job.attempts - 1, "released"
        self.took("release")
        return lease

    @rule(lease=leases, wrong_worker=st.booleans())
    def heartbeat(self, lease: Lease, wrong_worker: bool) -> None:
        worker, current = self.held.get(lease.job_id, (None, None))
        if current != lease:
            assert self.store.heartbeat(WORKERS[0], [lease.token], 30) == set()
            assert self.store.heartbeat(WORKERS[1], [lease.token], 30) == set()
            return
        assert worker is not None
        self.took("heartbeat, wrong worker" if wrong_worker else "heartbeat")
        if wrong_worker:  # a token is only good for the worker that claimed it
            other = WORKERS[1] if worker == WORKERS[0] else WORKERS[0]
            assert self.store.heartbeat(other, [lease.token], 30) == set()
        else:
            assert self.store.heartbeat(worker, [lease.token], 30) == {lease.token}
            self.expired.discard(lease.job_id)  # extended: no longer expired

    @rule(target=lost)
    def rescue(self) -> Any:
        rescued = self.store.rescue()
        assert {j.id for j in rescued} == self.expired  # exactly the expired leases
        out = []
        for j in rescued:
            out.append(self._lose(j.id))
            job = self.jobs[j.id]
            job.state = "failed" if job.attempts >= job.max_attempts else "pending"
            job.outcomes[-1] = "lost"
            assert j.state.value == job.state
            self.took(f"rescue -> {job.state}")
        return multiple(*out)

    @precondition(lambda self: self.jobs)
    @rule(target=lost, data=st.data())
    def cancel(self, data: st.DataObject) -> Any:
        job_id = self._pick(data, ("pending", "running"), "cancel")
        job = self.jobs[job_id]
        if job.state in ("done", "failed"):
            with pytest.raises(InvalidTransition):
                self.store.cancel(job_id)
            return multiple()
        got = self.store.cancel(job_id)
        assert got.state is JobState.CANCELLED
        lost = []
        if job.state == "running":
            lost.append(self._lose(job_id))
            job.outcomes[-1] = "cancelled"
            self.took("cancel running")
        job.state = "cancelled"
        return multiple(*lost)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        job_id = self._pick(data, ("failed", "cancelled"), "retry")
        job = self.jobs[job_id]
        if job.state not in ("failed", "cancelled"):
            with pytest.raises(InvalidTransition):
                self.store.retry(job_id)
            return
        got = self.store.retry(job_id)
        assert got.state is JobState.PENDING and got.attempts == 0
        self.took(f"retry {job.state}")
        job.state, job.attempts = "pending", 0

    @rule(lease=lost)
    def stale_lease_is_refused(self, lease: Lease) -> None:
        """Fencing: a lost claim changes nothing, whatever it tries."""
        before = self.store.get(lease.job_id)
        assert self.store.complete(lease, "late") is False
        assert self.store.fail(lease, "late", "tb", 0) is None
        assert self.store.release([lease]) == 0
        for worker in WORKERS:
            assert self.store.heartbeat(worker, [lease.token], 30) == set()
        assert self.store.get(lease.job_id) == before
        self.took("stale lease refused")

    # -- invariants, after every step ----------------------------------------------------------

    @invariant()
    def every_job_is_what_the_model_says(self) -> None:
        # Two reads for all jobs (not one per job), so that checking after every step is cheap.
        stored = {j.id: j for j in self.store.list_jobs(limit=500).items}
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(attempts).order_by(attempts.c.id)).all()
        logs: dict[int, list[Any]] = {}
        for row in rows:
            logs.setdefault(row.job_id, []).append(row)
        assert set(stored) == set(self.jobs) and set(logs) <= set(self.jobs)
        for job_id, expected in self.jobs.items():
            job, log = stored[job_id], logs.get(job_id, [])
            assert job.state.value == expected.state, (job_id, job.state, expected)
            assert job.attempts == expected.attempts
            assert 0 <= job.attempts <= job.max_attempts == expected.max_attempts  # invariant 4
            # Attempts are recorded when they end, and not at all when they succeed: no row is
            # ever open, and none is done.
            assert [a for a in log if a.outcome in ("running", "done")] == []
            lease = (job.worker_id, job.lease_token, job.lease_expires_at)
            if job.state is JobState.DONE:
                # The row is the record of the attempt that succeeded; reading the job shows
                # it last.
                assert lease == (expected.done_by, None, None)
                assert job_id not in self.held
                last = self.store.get(job_id).attempt_log[-1]
                assert (last.id, last.outcome, last.attempt, last.worker_id) == (
                    None, AttemptOutcome.DONE, job.attempts, expected.done_by)
                assert last.finished_at == job.finished_at is not None
            elif job.state is JobState.RUNNING:
                # Invariant 2: exactly one live attempt, the one the job's lease names; it is
                # not recorded yet, and reading the job shows it last.
                assert None not in lease
                assert job.lease_token not in {a.lease_token for a in log}
                worker, held = self.held[job_id]
                assert (job.worker_id, job.lease_token) == (worker, held.token)
                live = self.store.get(job_id).attempt_log[-1]
                assert (live.id, live.outcome, live.attempt, live.worker_id) == (
                    None, AttemptOutcome.RUNNING, job.attempts, worker)
            else:
                assert lease == (None, None, None)
                assert job_id not in self.held
            in_row = expected.state in ("running", "done")  # its last attempt is the row's
            ended = expected.outcomes[:-1] if in_row else expected.outcomes
            assert [a.outcome for a in log] == ended
            live = 1 if in_row else 0
            assert [a.attempt for a in log] == expected.numbers[:len(expected.numbers) - live]
            for a in log:
                assert (a.finished_at is None) == (a.outcome == AttemptOutcome.RUNNING.value)
            assert (job.finished_at is not None) == job.state.is_final

    @invariant()
    def tokens_are_never_reused(self) -> None:
        tokens = [lease.token for _, lease in self.held.values()]
        assert len(tokens) == len(set(tokens))


STATE_MACHINE_SETTINGS = hsettings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    database=None,
    # No shrinking: each replay builds a fresh database, so shrinking a failure can outlast the
    # test's timeout; the whole failing run (at most ~46 steps) is printed instead.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


#: Paths that every run must take at least once, so that it cannot pass by doing little.
MUST_TAKE = ("fail -> pending", "fail -> failed", "rescue -> pending", "rescue -> failed",
             "release", "heartbeat", "heartbeat, wrong worker", "cancel running",
             "retry failed", "retry cancelled", "stale lease refused",
             "claim limited by its limit")


def test_job_state_machine(db_url: str) -> None:
    # Hypothesis varies how long its runs are; a short one may miss a path (a rescue back to
    # pending needs an expired lease with attempts left, then a rescue: seen missing after three
    # rounds once in many CI runs). Explore again (fresh random runs) until every path was
    # taken, at most six rounds; a round that is not needed never runs.
    JobLifecycle.paths = Counter()
    for rounds in range(1, 7):
        _run_job_state_machine(db_url)
        missing = [p for p in MUST_TAKE if not JobLifecycle.paths[p]]
        if not missing:
            break
    print(f"\n{rounds} round(s); paths taken: {dict(JobLifecycle.paths)}")
    assert not missing, f"the state machine never took {missing}: {dict(JobLifecycle.paths)}"


def _run_job_state_machine(db_url: str) -> None:
    if db_url.startswith("sqlite"):

        class Machine(JobLifecycle):
            def fresh_store(self) -> SqlStore:
                # A new database file per example.
                self.tmp = tempfile.mkdtemp(prefix="jobq-sm-")
                return open_store(load_settings(database_url=f"sqlite:///{self.tmp}/jobq.db"))

            def teardown(self) -> None:
                super().teardown()
                shutil.rmtree(self.tmp, ignore_errors=True)

        run_state_machine_as_test(Machine, settings=STATE_MACHINE_SETTINGS)
        return

    shared = open_store(load_settings(database_url=db_url))  # migrated once, emptied per example
    try:

        class PgMachine(JobLifecycle):
            def fresh_store(self) -> SqlStore:
                with psycopg.connect(db_url, autocommit=True) as conn:
                    conn.execute("TRUNCATE jobq_jobs, jobq_attempts, jobq_workers "
                                 "RESTART IDENTITY CASCADE")
                return shared

            def teardown(self) -> None:
                pass  # the store outlives the example

        run_state_machine_as_test(PgMachine, settings=STATE_MACHINE_SETTINGS)
    finally:
        shared.dispose()
