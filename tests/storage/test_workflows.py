"""Dependencies between jobs in the store, both backends: waiting until every parent is
done, the child made due in the parent's completion, cancellations passed down (or not, with
on_parent_failure="run"), retries that bring them back, callbacks enqueued with the end."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jobq.errors import InvalidJob
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.types import JobState, NewJob

W, P, R, D, F, C = (JobState.WAITING, JobState.PENDING, JobState.RUNNING, JobState.DONE,
                    JobState.FAILED, JobState.CANCELLED)


def states(store: SqlStore, *ids: int) -> list[JobState]:
    return [store.get(i, with_attempts=False).state for i in ids]


def run_one(store: SqlStore, job_id: int, ok: bool = True, result: Any = "r") -> None:
    """Claim ``job_id`` (the only due job) and end it: done with ``result``, or failed."""
    claimed = store.claim("w", ["default"], 10, 30)
    assert [c.job.id for c in claimed] == [job_id], [c.job.id for c in claimed]
    lease = claimed[0].lease
    if ok:
        assert store.complete_many([(lease, result)]) == {lease.token}
    else:
        assert store.fail(lease, "boom", "tb", 0, final=True) is F


def graph(store: SqlStore, *news: NewJob) -> list[int]:
    return [r.job.id for r in store.enqueue_many(list(news))]


def test_a_chain_runs_one_after_another_each_made_due_by_the_one_before(
        store: SqlStore) -> None:
    a, b, c = graph(store, NewJob("echo", 1), NewJob("echo", 2, depends_on_items=(0,)),
                    NewJob("echo", 3, depends_on_items=(1,)))
    assert states(store, a, b, c) == [P, W, W]
    assert store.get(b).parents_left == 1
    run_one(store, a, result={"n": 1})
    assert states(store, a, b, c) == [D, P, W]
    assert store.get(b).parents_left == 0
    assert [(p.id, p.state, p.result) for p in store.parents(b)] == [(a, D, {"n": 1})]
    run_one(store, b)
    run_one(store, c)
    assert states(store, a, b, c) == [D, D, D]
    assert store.relatives(b) == ([a], [c])


def test_a_child_of_two_waits_for_both_and_is_due_at_the_second(store: SqlStore) -> None:
    a, b, c = graph(store, NewJob("echo"), NewJob("echo"),
                    NewJob("echo", depends_on_items=(0, 1)))
    claimed = {x.job.id: x.lease for x in store.claim("w", ["default"], 10, 30)}
    assert set(claimed) == {a, b}
    store.complete_many([(claimed[b], None)])
    assert states(store, c) == [W] and store.get(c).parents_left == 1
    store.complete_many([(claimed[a], None)])
    assert states(store, c) == [P]


def test_a_failed_parent_cancels_its_dependents_transitively_unless_they_run_anyway(
        store: SqlStore) -> None:
    a, b, c, d = graph(store, NewJob("echo", max_attempts=1),
                       NewJob("echo", depends_on_items=(0,)),
                       NewJob("echo", depends_on_items=(1,)),
                       NewJob("echo", depends_on_items=(0,), on_parent_failure="run"))
    run_one(store, a, ok=False)
    assert states(store, a, b, c, d) == [F, C, C, P]
    got_b, got_c = store.get(b), store.get(c)
    assert got_b.last_error == f"cancelled: its parent job {a} is failed"
    assert got_b.cancelled_by == a and got_c.cancelled_by == b
    assert got_c.finished_at is not None
    # A retry of the parent brings its dependents back, waiting for it again.
    store.retry(a)
    assert states(store, a, b, c, d) == [P, W, W, P]
    assert store.get(b).parents_left == 1 and store.get(b).last_error is None
    claimed = {x.job.id: x.lease for x in store.claim("w", ["default"], 10, 30)}
    assert set(claimed) == {a, d}
    store.complete_many([(claimed[a], None), (claimed[d], None)])
    assert states(store, b, c) == [P, W]


def test_cancelling_a_parent_cancels_its_dependents_and_a_waiting_job_can_be_cancelled(
        store: SqlStore) -> None:
    a, b, c = graph(store, NewJob("echo"), NewJob("echo", depends_on_items=(0,)),
                    NewJob("echo"))
    d = store.enqueue(NewJob("echo", depends_on=(c,))).job.id
    store.cancel(a)
    assert states(store, a, b) == [C, C]
    assert store.get(b).last_error == f"cancelled: its parent job {a} is cancelled"
    assert store.cancel(d).state is C  # waiting → cancelled
    run_one(store, c)
    assert states(store, d) == [C]  # its parent's end changes nothing now


def test_parents_that_ended_already_count_at_enqueue(store: SqlStore) -> None:
    a, b = graph(store, NewJob("echo", max_attempts=1), NewJob("echo", max_attempts=1))
    claimed = {x.job.id: x.lease for x in store.claim("w", ["default"], 10, 30)}
    store.complete_many([(claimed[a], 1)])
    store.fail(claimed[b], "boom", "", 0, final=True)
    after_done = store.enqueue(NewJob("echo", depends_on=(a,))).job
    assert (after_done.state, after_done.parents_left) == (P, 0)
    after_failed = store.enqueue(NewJob("echo", depends_on=(a, b))).job
    assert after_failed.state is C and after_failed.cancelled_by == b
    anyway = store.enqueue(NewJob("echo", depends_on=(b,), on_parent_failure="run")).job
    assert anyway.state is P


def test_bad_parents_are_refused_and_nothing_of_the_batch_is_stored(store: SqlStore) -> None:
    before = len(store.list_jobs(limit=100).items)
    with pytest.raises(InvalidJob) as missing:
        store.enqueue_many([NewJob("echo"), NewJob("echo", depends_on=(987654,))])
    assert missing.value.field == "depends_on" and missing.value.index == 1
    with pytest.raises(InvalidJob) as later:
        store.enqueue_many([NewJob("echo", depends_on_items=(1,)), NewJob("echo")])
    assert later.value.field == "depends_on_items" and later.value.index == 0
    for bad in ({"depends_on": (0,)}, {"depends_on": ("1",)}, {"depends_on": (True,)},
                {"on_parent_failure": "run"}, {"depends_on": (1,), "on_parent_failure": "x"}):
        with pytest.raises(InvalidJob):
            NewJob("echo", **bad)  # type: ignore[arg-type]
    assert len(store.list_jobs(limit=100).items) == before


def test_a_child_added_while_its_parent_runs_is_released_by_that_completion(
        store: SqlStore) -> None:
    """The claim was made before the child existed: the worker's batch completion leaves the
    parent out (it has a dependent now) and completes it through the dependents' path."""
    a = store.enqueue(NewJob("echo")).job.id
    (claimed,) = store.claim("w", ["default"], 1, 30)
    assert claimed.job.on_final is None
    b = store.enqueue(NewJob("echo", depends_on=(a,))).job.id
    assert states(store, b) == [W]
    assert store.complete_many([(claimed.lease, "x")]) == {claimed.lease.token}
    assert states(store, a, b) == [D, P]


def test_a_lost_lease_completes_nothing_on_either_path(store: SqlStore) -> None:
    a, b = graph(store, NewJob("echo"), NewJob("echo", depends_on_items=(0,)))
    (claimed,) = store.claim("w", ["default"], 1, 30)
    store.cancel(a)
    assert store.complete_many([(claimed.lease, "late")]) == set()
    assert states(store, a, b) == [C, C]


def test_two_parents_ending_at_once_release_their_child_once(store: SqlStore) -> None:
    for _ in range(10):
        a, b, c = graph(store, NewJob("echo"), NewJob("echo"),
                        NewJob("echo", depends_on_items=(0, 1)))
        leases = {x.job.id: x.lease for x in store.claim("w", ["default"], 2, 30)}
        go = threading.Barrier(2)
        errors: list[BaseException] = []

        def finish(job_id: int) -> None:
            try:
                go.wait(5)
                store.complete_many([(leases[job_id], None)])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=finish, args=(j,)) for j in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors
        assert states(store, a, b, c) == [D, D, P]
        assert store.get(c).parents_left == 0
        run_one(store, c)


def test_the_graph_of_a_job_is_every_job_linked_to_it(store: SqlStore) -> None:
    a, b, c, d = graph(store, NewJob("echo"), NewJob("echo"),
                       NewJob("echo", depends_on_items=(0, 1)),
                       NewJob("echo", depends_on_items=(2,)))
    lone = store.enqueue(NewJob("echo")).job.id
    nodes, edges = store.workflow(b)
    assert [n.id for n in nodes] == [a, b, c, d]
    assert edges == [(a, c), (b, c), (c, d)]
    assert [n.id for n in store.workflow(lone)[0]] == [lone]


def test_a_callback_url_enqueues_its_delivery_with_the_end(store: SqlStore,
                                                           settings: Settings) -> None:
    store.settings = settings.model_copy(update={"webhook_secret": "s" * 32})
    job = store.enqueue(NewJob("echo", 5, callback_url="https://example.com/hook")).job
    assert job.on_final is True
    run_one(store, job.id, result={"ok": True})
    deliveries = [j for j in store.list_jobs(limit=10).items if j.task_type == "jobq.webhook"]
    assert len(deliveries) == 1
    payload = deliveries[0].payload
    assert payload["url"] == "https://example.com/hook" and payload["seal"]
    assert payload["body"]["job_id"] == job.id and payload["body"]["state"] == "done"
    assert payload["body"]["result"] == {"ok": True}
    assert deliveries[0].queue == job.queue and deliveries[0].state is P
