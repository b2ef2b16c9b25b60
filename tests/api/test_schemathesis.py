"""Schemathesis against the API's own OpenAPI document, on every backend.

The document is fetched from a real uvicorn server (``schemathesis.openapi.from_url``), and every
generated request goes over real HTTP to that server, backed by a real database of each kind
(seeded with jobs in every state). Each operation gets the schema's examples, the coverage
phase (boundary and just-out-of-range values, unexpected methods) and random fuzzing, both with
valid data (``POSITIVE``) and with data that breaks the schema (``NEGATIVE``). Every response
must pass these checks:

- ``not_a_server_error``: never a 5xx;
- ``status_code_conformance``: only statuses the document declares for the operation;
- ``content_type_conformance``: the declared media type (``application/problem+json`` for
  problems);
- ``response_schema_conformance``: the body matches the declared schema;
- ``response_headers_conformance``: declared response headers are present and valid;
- ``negative_data_rejection``: data that breaks the schema is refused with a 4xx.

Requests are counted as they are sent, and the test fails when fewer than
``MIN_REQUESTS`` were made, so it cannot pass by silently testing nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import schemathesis
from factories import claim_expired, claim_one, enqueue
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)
from test_api import serve

from jobq.api import create_app
from jobq.settings import Settings
from jobq.store import SqlStore

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,  # applies to negative cases only
]

#: At least this many generated requests per backend, over all operations and both modes.
MIN_REQUESTS = 1000

#: Random examples per operation, on top of its examples and coverage cases. Operations
#: without parameters (``GET /stats``) exhaust their few distinct cases early, so the others
#: carry the total above MIN_REQUESTS (about 1,300 requests, 30 s per backend on 2 cores).
EXAMPLES = 200

#: Names the app knows (the built-in tasks); random names are answered 422 "unknown task".
KNOWN_TASKS = ("echo", "noop", "test", "fail", "sleep")


def _seed(store: SqlStore) -> None:
    """Jobs in every state with small ids, so that generated ids also hit real jobs and the
    responses carry attempts, results and errors for the schema checks."""
    for n in range(3):
        enqueue(store, task_type="echo", payload={"n": n}, max_attempts=2)
    done = claim_one(store)
    store.complete(done.lease, {"echoed": [1, 2.5, None, "x"]})
    failed = claim_one(store)
    store.fail(failed.lease, "boom", "Traceback (most recent call last): …", 0)
    claim_one(store, "w2")  # one left running
    store.register_worker("w2", "host-2", 4242, ["default"], 4)
    cancelled = enqueue(store, task_type="noop", queue="other", priority=5)
    store.cancel(cancelled.id)
    enqueue(store, task_type="test", payload="hello", idempotency_key="seeded")
    lost = enqueue(store, task_type="sleep", payload=1, queue="slow", max_attempts=1)
    claim_expired(store, "w3", queues=("slow",))
    store.rescue()
    assert store.get(lost.id).state.value == "failed"


@pytest.fixture
def base_url(settings: Settings, store: SqlStore) -> Iterator[str]:
    _seed(store)
    with serve(create_app(settings=settings)) as client:
        yield str(client.base_url)


def _steer_valid_submission(case: schemathesis.Case) -> None:
    """Make a valid ``POST /jobs`` (or ``/jobs/batch``) case likely to create a job, keeping
    it valid.

    The rules that span fields cannot be said in the schema: the job comes as a JSON body or as
    query parameters, never both; ``run_at`` excludes ``delay_seconds``. And a generated name
    is almost never a registered task. Without this, nearly every valid submission would stop
    at a 422 and never reach the database. Invalid (negative) cases are left as generated.
    """
    if case.meta is None or case.meta.generation.mode.is_negative:
        return
    body = case.body if isinstance(case.body, dict) else None
    if case.operation.label == "POST /jobs/batch":
        # The same for each job of a batch; a batch with one unknown task is refused whole.
        for spec in (body or {}).get("jobs", []):
            if isinstance(spec, dict):
                _steer_spec(spec, always=len((body or {})["jobs"]) % 2 == 1)
        return
    if case.operation.label != "POST /jobs":
        return
    if body is not None and case.query:
        case.query = {}
    _steer_spec(body if body is not None else case.query)


def _short_waits(case: schemathesis.Case) -> None:
    """A valid ``GET /jobs/{id}?wait=S`` waits up to S (at most 60) seconds for a job that
    does not finish here: cut to a tenth of a second, still valid, so that some 1,000 cases
    end in time (the full lengths are tested in test_api.py). Invalid values stay as made."""
    if (case.operation.label == "GET /jobs/{job_id}" and case.meta is not None
            and not case.meta.generation.mode.is_negative and isinstance(case.query, dict)):
        wait = case.query.get("wait")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0.1:
            case.query["wait"] = 0.1


def _steer_spec(spec: dict[str, Any], always: bool = False) -> None:
    if spec.get("run_at") is not None and spec.get("delay_seconds") is not None:
        del spec["delay_seconds"]
    name = spec.get("task_type")
    if always or not isinstance(name, str) or len(name) % 2 == 0:  # about half of them
        spec["task_type"] = KNOWN_TASKS[len(str(name)) % len(KNOWN_TASKS)]


def _operation_test(
    operation: schemathesis.APIOperation, config: Any, call: Callable[[schemathesis.Case], None]
) -> Callable[[], None]:
    """A Hypothesis test of ``operation``, with the phases that ``schema.parametrize()`` gives.

    Built with the builder behind ``schema.parametrize()`` (and the CLI's engine): schema
    examples, the coverage phase (boundary and just-out-of-bounds values of every parameter,
    deterministic) and random fuzzing, in each generation mode the schema config enables.
    Called directly rather than collected, so that one test per backend runs them all and
    counts the requests they make.
    """
    return create_test(
        operation=operation,
        test_func=call,
        config=HypothesisTestConfig(
            project=config,
            modes=[HypothesisTestMode.EXAMPLES, HypothesisTestMode.COVERAGE,
                   HypothesisTestMode.FUZZING],
            settings=hsettings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,  # nothing written to the working tree; every run is fresh
                suppress_health_check=list(HealthCheck),
                print_blob=True,
            ),
        ),
    )


def test_schemathesis_finds_no_failure(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    # No API key exists, so the API is open (on loopback) and the declared bearer scheme is not
    # enforced: leave the Authorization header out instead of expecting a missing one refused.
    schema.config.generation.update(
        with_security_parameters=False,
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    created: Counter[str] = Counter()
    started = time.monotonic()
    with requests.Session() as session:
        for operation in operations:

            def call(case: schemathesis.Case) -> None:
                _steer_valid_submission(case)
                _short_waits(case)
                sent[case.operation.label] += 1
                response = case.call_and_validate(
                    base_url=base_url, session=session, checks=CHECKS, timeout=15
                )
                statuses[response.status_code] += 1
                if response.status_code == 201:
                    created[case.operation.label] += 1

            _operation_test(operation, schema.config, call)()
    took = time.monotonic() - started
    total = sum(sent.values())
    print(f"\nschemathesis: {total} requests in {took:.1f} s; per operation {dict(sent)}; "
          f"statuses {dict(sorted(statuses.items()))}")
    assert total >= MIN_REQUESTS, dict(sent)
    assert set(sent) == {op.label for op in operations}, dict(sent)  # every operation ran
    # Valid submissions, single and batched, did reach the database.
    assert created["POST /jobs"] > 0 and created["POST /jobs/batch"] > 0, dict(created)
