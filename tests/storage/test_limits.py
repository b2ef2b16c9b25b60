"""Limits across the cluster, as the store enforces them in the claim: per-queue concurrency
and rate, per-key concurrency; that a stale view of the limits cannot break one; and claims
racing from many threads. On both backends.
"""

from __future__ import annotations

import threading
import time

import pytest

from jobq.errors import InvalidJob
from jobq.registry import TaskRegistry
from jobq.service import JobService
from jobq.settings import Settings
from jobq.store import SqlStore, open_store
from jobq.store.limits import LIMITS_TTL
from jobq.types import JobState, NewJob


def add(store: SqlStore, n: int, **fields: object) -> list[int]:
    return [store.enqueue(NewJob(task_type="echo", payload=i, **fields)).job.id  # type: ignore[arg-type]
            for i in range(n)]


def running(store: SqlStore, queue: str) -> int:
    return store.list_queues(only=[queue])[0].jobs["running"]


def test_queue_concurrency(store: SqlStore) -> None:
    store.set_queue_limits("lim", concurrency=2, rate=None, burst=None)
    add(store, 5, queue="lim")
    add(store, 3)
    got = store.claim("w1", ["lim", "default"], 10, 30)
    assert sorted(c.job.queue for c in got) == ["default"] * 3 + ["lim"] * 2
    assert store.claim("w2", ["lim"], 10, 30) == []  # another worker: the same limit
    lim = [c for c in got if c.job.queue == "lim"]
    store.complete(lim[0].lease, None)
    assert len(store.claim("w2", ["lim"], 10, 30)) == 1
    # A failed attempt frees its slot too; so does a rescued lease.
    store.fail(lim[1].lease, "boom", "", 0)
    (third,) = store.claim("w2", ["lim"], 10, 0.2)
    time.sleep(0.3)
    assert [j.id for j in store.rescue()] == [third.job.id]
    assert len(store.claim("w2", ["lim"], 10, 30)) == 1
    assert running(store, "lim") == 2
    # Lifted: the rest at once.
    store.set_queue_limits("lim", concurrency=None, rate=None, burst=None)
    assert len(store.claim("w2", ["lim"], 10, 30)) == 2


def test_queue_rate_and_burst(store: SqlStore) -> None:
    store.set_queue_limits("rl", concurrency=None, rate=4.0, burst=3)
    add(store, 10, queue="rl")
    assert len(store.claim("w", ["rl"], 10, 30)) == 3  # the full bucket
    assert store.claim("w", ["rl"], 10, 30) == []
    time.sleep(0.55)  # 4 per second: two tokens back
    assert len(store.claim("w", ["rl"], 10, 30)) == 2
    time.sleep(2)  # never more than the burst saved up
    assert len(store.claim("w", ["rl"], 10, 30)) == 3
    info = store.list_queues(only=["rl"])[0]
    assert (info.rate, info.burst, info.concurrency) == (4.0, 3, None)


def test_key_concurrency(store: SqlStore) -> None:
    a = add(store, 3, concurrency_key="acct-a", concurrency_limit=1)
    b = add(store, 3, concurrency_key="acct-b", concurrency_limit=2)
    free = add(store, 2)
    got = store.claim("w", ["default"], 10, 30)
    by_key = sorted((c.job.concurrency_key or "-") for c in got)
    assert by_key == ["-", "-", "acct-a", "acct-b", "acct-b"]
    assert store.claim("w", ["default"], 10, 30) == []
    first_a = next(c for c in got if c.job.concurrency_key == "acct-a")
    store.complete(first_a.lease, None)
    (next_a,) = store.claim("w", ["default"], 10, 30)
    assert next_a.job.id == a[1]  # in order within the lane
    assert {c.job.id for c in got} >= set(free) and len(b) == 3


def test_a_stale_view_of_the_limits_cannot_break_one(settings: Settings,
                                                     store: SqlStore) -> None:
    other = open_store(settings)  # another worker's process, its view cached
    try:
        add(store, 6, queue="late")
        assert other.limited_view(["late"]) == (frozenset(), frozenset())
        store.set_queue_limits("late", concurrency=1, rate=None, burst=None)
        # Its view still says "no limits", yet its claim leaves the queue alone...
        assert other.claim("w-other", ["late"], 10, 30) == []
        time.sleep(LIMITS_TTL + 0.1)
        # ...until its view catches up, and then it keeps the limit.
        assert len(other.claim("w-other", ["late"], 10, 30)) == 1
        assert other.claim("w-other", ["late"], 10, 30) == []
        # The same for a keyed job enqueued behind its back.
        add(store, 2, queue="late2", concurrency_key="k", concurrency_limit=1)
        assert len(other.claim("w-other", ["late2"], 10, 30)) <= 1
        time.sleep(LIMITS_TTL + 0.1)
        assert len(other.claim("w-other", ["late2"], 10, 30)) <= 1
        assert running(store, "late2") == 1
    finally:
        other.dispose()


def test_a_paused_limited_queue_gives_nothing(store: SqlStore) -> None:
    store.set_queue_limits("pl", concurrency=5, rate=None, burst=None)
    add(store, 2, queue="pl", concurrency_key="k", concurrency_limit=1)
    add(store, 2, queue="pl")
    store.pause_queue("pl")
    assert store.claim("w", ["pl"], 10, 30) == []
    store.resume_queue("pl")
    assert len(store.claim("w", ["pl"], 10, 30)) == 3  # one keyed, two plain
    assert store.list_queues(only=["pl"])[0].concurrency == 5  # pausing kept the limit


def test_racing_claims_never_pass_a_limit(settings: Settings, store: SqlStore) -> None:
    store.set_queue_limits("race", concurrency=3, rate=None, burst=None)
    ids = add(store, 40, queue="race") + add(store, 20, queue="race",
                                              concurrency_key="one", concurrency_limit=1)
    stores = [open_store(settings) for _ in range(6)]
    seen: list[int] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + 20

    def worker(s: SqlStore, n: int) -> None:
        try:
            while time.monotonic() < deadline:
                got = s.claim(f"w{n}", ["race"], 4, 30)
                seen.append(running(s, "race"))
                if not got and running(s, "race") == 0 and all(
                        s.get(i, with_attempts=False).state is JobState.DONE for i in ids[-3:]):
                    return
                for c in got:
                    time.sleep(0.005)
                    s.complete(c.lease, None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.dispose()
    assert not errors, errors
    assert max(seen) <= 3
    assert all(store.get(i, with_attempts=False).state is JobState.DONE for i in ids)


def test_the_service_takes_task_and_job_keys_and_checks_limits(settings: Settings,
                                                               store: SqlStore) -> None:
    registry = TaskRegistry()
    registry.register("per_account", lambda p: p, concurrency_key=lambda p: p["acct"],
                      concurrency_limit=2)
    registry.register("echo", lambda p: p)
    service = JobService(store, registry, settings)
    job = service.enqueue("per_account", {"acct": 7}).job
    assert (job.concurrency_key, job.concurrency_limit) == ("7", 2)
    own = service.enqueue("per_account", {"acct": 7}, concurrency_key="x").job
    assert (own.concurrency_key, own.concurrency_limit) == ("x", 2)
    plain = service.enqueue("echo", 1, concurrency_key="y").job
    assert (plain.concurrency_key, plain.concurrency_limit) == ("y", 1)
    with pytest.raises(InvalidJob, match="concurrency_key"):
        service.enqueue("per_account", {"no": "acct"})
    with pytest.raises(InvalidJob, match="needs a concurrency_key"):
        service.enqueue("echo", 1, concurrency_limit=3)
    for kwargs, field in (({"concurrency": 0}, "concurrency"), ({"rate": -1.0}, "rate"),
                          ({"rate": float("nan")}, "rate"), ({"burst": 2}, "burst"),
                          ({"concurrency": True}, "concurrency")):
        with pytest.raises(InvalidJob) as info:
            service.set_queue_limits("q", **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field
    assert service.set_queue_limits("q", rate=2.5).burst == 3


def test_a_busy_keys_backlog_does_not_hide_other_keys(store: SqlStore) -> None:
    from jobq.store.limits import KEYED_LOOKAHEAD

    add(store, KEYED_LOOKAHEAD + 20, queue="k", concurrency_key="busy", concurrency_limit=1,
        priority=5)
    (other,) = add(store, 1, queue="k", concurrency_key="other", concurrency_limit=1)
    assert len(store.claim("w", ["k"], 1, 30)) == 1  # one of the busy key's
    assert [c.job.id for c in store.claim("w", ["k"], 5, 30)] == [other]
