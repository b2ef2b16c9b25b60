"""Workflows run by a whole worker, both backends: a chain passes each result on, a
1,000-job fan-out/fan-in runs its callback exactly once with every member's end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from jobq import chain, group, step
from jobq.registry import TaskRegistry, load_registry
from jobq.service import JobService
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.types import JobState
from serving import serve


@pytest.fixture
def fast(db_url: str) -> Settings:
    return load_settings(database_url=db_url, lease_seconds=10, poll_interval_seconds=0.05,
                         shutdown_grace_seconds=1, tasks=["flow_tasks"])


@pytest.fixture
def registry() -> TaskRegistry:
    return load_registry(["flow_tasks"])


def final(store: SqlStore, job_id: int) -> Callable[[], bool]:
    return lambda: store.get(job_id, with_attempts=False).state.is_final


def test_a_chain_hands_each_result_to_the_next(store: SqlStore, fast: Settings,
                                               registry: TaskRegistry) -> None:
    service = JobService(store, registry, fast)
    flow = chain(step("fl_add", {"n": 1}), step("fl_add", {"n": 10}), step("fl_add", {"n": 100}))
    ids = [r.job.id for r in service.enqueue_many(flow)]
    serve(store, fast, registry, final(store, ids[-1]))
    assert [store.get(i).result for i in ids] == [1, 11, 111]
    graph = service.workflow(ids[1])
    assert [n["id"] for n in graph["jobs"]] == ids and graph["final"]
    assert graph["states"]["done"] == 3


def test_a_thousand_job_fan_out_fan_in_runs_its_callback_once(
        store: SqlStore, fast: Settings, registry: TaskRegistry, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("JOBQ_TEST_LEDGER", str(ledger))
    service = JobService(store, registry, fast)
    members = [step("fl_member", {"n": i, "fail": i % 100 == 7}) for i in range(1000)]
    results = service.enqueue_many(group(members, then=step("fl_chord")))
    callback = results[-1].job
    assert len(results) == 1001 and callback.state is JobState.WAITING
    assert callback.parents_left == 1000
    serve(store, fast, registry, final(store, callback.id), concurrency=50)
    got = store.get(callback.id)
    assert got.state is JobState.DONE
    assert got.result == {"parents": 1000, "states": {"done": 990, "failed": 10},
                          "sum": sum(range(1000)) - sum(range(7, 1000, 100))}
    assert ledger.read_text().splitlines() == [f"chord {callback.id} 1"]  # exactly once
    parents, children = store.relatives(callback.id)
    assert len(parents) == 1000 and children == []


def test_a_failed_step_cancels_the_rest_of_its_chain(store: SqlStore, fast: Settings,
                                                     registry: TaskRegistry) -> None:
    service = JobService(store, registry, fast)
    ids = [r.job.id for r in service.enqueue_many(chain(
        step("fl_member", {"n": 1, "fail": True}), step("fl_add", {"n": 2}),
        step("fl_add", {"n": 3})))]
    serve(store, fast, registry, final(store, ids[-1]))
    assert [store.get(i).state for i in ids] == [
        JobState.FAILED, JobState.CANCELLED, JobState.CANCELLED]
