"""JobService: defaults, task checks and refusal of unstorable jobs, on both backends."""

from __future__ import annotations

import pytest

from jobq.errors import InvalidJob, UnknownTask
from jobq.registry import TaskRegistry
from jobq.service import JobService
from jobq.settings import Settings
from jobq.store import SqlStore


@pytest.fixture
def svc(store: SqlStore, settings: Settings) -> JobService:
    registry = TaskRegistry()
    registry.register("plain", lambda payload: payload)
    registry.register("picky", lambda payload: payload, max_attempts=7)
    return JobService(store, registry, settings)


def test_max_attempts_comes_from_the_job_then_the_task_then_the_settings(
    svc: JobService, settings: Settings
) -> None:
    assert svc.enqueue("plain").job.max_attempts == settings.max_attempts == 3
    assert svc.enqueue("picky").job.max_attempts == 7
    assert svc.enqueue("picky", max_attempts=2).job.max_attempts == 2


def test_unknown_task_is_refused_naming_the_known_ones(svc: JobService) -> None:
    with pytest.raises(UnknownTask) as err:
        svc.enqueue("nope")
    assert err.value.known == ["picky", "plain"]
    assert "picky, plain" in str(err.value)
    assert svc.list_jobs().items == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"payload": "a\x00b"}, "payload"),
        ({"payload": {"k": ["\ud800"]}}, "payload"),
        ({"payload": float("nan")}, "payload"),
        ({"payload": {"x": float("inf")}}, "payload"),
        ({"priority": 5000}, "priority"),
        ({"priority": True}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"queue": "bad queue"}, "queue"),
        ({"queue": "q\n"}, "queue"),
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"delay_seconds": float("nan")}, "delay_seconds"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k\x00"}, "idempotency_key"),
    ],
)
def test_unstorable_jobs_are_refused_before_the_database_sees_them(
    svc: JobService, kwargs: dict, field: str
) -> None:
    with pytest.raises(InvalidJob) as err:
        svc.enqueue("plain", **kwargs)
    assert err.value.field == field
    assert svc.list_jobs().items == []


def test_deep_payloads_are_refused_shallow_ones_kept(svc: JobService) -> None:
    deep: object = "leaf"
    for _ in range(64):
        deep = [deep]
    assert svc.get(svc.enqueue("plain", deep).job.id).payload == deep
    with pytest.raises(InvalidJob):
        svc.enqueue("plain", [deep])
