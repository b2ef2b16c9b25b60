"""Tags and meta: checked by NewJob, kept with the job, ``list_jobs(tag=)`` (through a GIN
index on PostgreSQL), in batches too; on both backends."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from jobq.errors import InvalidJob
from jobq.service import JobService
from jobq.store import SqlStore
from jobq.types import JobState, NewJob


@pytest.mark.parametrize("tags, meta, field", [
    ("billing", None, "tags"),
    (["ok", "not ok"], None, "tags"),
    ([f"t{i}" for i in range(11)], None, "tags"),
    ([1], None, "tags"),
    ([], ["a"], "meta"),
    ([], {"x": float("nan")}, "meta"),
    ([], {"x": "y" * 5000}, "meta"),
    ([], {1: "a"}, "meta"),
])
def test_newjob_refuses_bad_tags_and_meta_naming_the_field(tags: Any, meta: Any,
                                                          field: str) -> None:
    with pytest.raises(InvalidJob) as err:
        NewJob("echo", tags=tags, meta=meta)
    assert err.value.field == field


def test_tags_repeat_once_and_keep_their_order() -> None:
    assert NewJob("echo", tags=["b", "a", "b"]).tags == ("b", "a")
    assert NewJob("echo", tags=[f"t{i}" for i in range(10)] * 2).tags[-1] == "t9"


def test_tags_and_meta_are_kept_and_found(store: SqlStore) -> None:
    plain = store.enqueue(NewJob("echo", 1)).job
    a = store.enqueue(NewJob("echo", 2, tags=("red", "big"), meta={"by": "ana", "n": [1]})).job
    b, c = (r.job for r in store.enqueue_many([
        NewJob("echo", 3, tags=("red",)),
        NewJob("echo", 4, queue="other", tags=("big",), meta={"k": None}),
    ]))
    assert (a.tags, a.meta) == (("red", "big"), {"by": "ana", "n": [1]})
    got = store.get(a.id)
    assert (got.tags, got.meta) == (("red", "big"), {"by": "ana", "n": [1]})
    assert (store.get(plain.id).tags, store.get(plain.id).meta) == ((), {})
    assert store.get(c.id).meta == {"k": None}
    assert [j.id for j in store.list_jobs(tag="red").items] == [b.id, a.id]
    assert [j.id for j in store.list_jobs(tag="big").items] == [c.id, a.id]
    assert [j.id for j in store.list_jobs(tag="big", queue="default").items] == [a.id]
    assert [j.id for j in store.list_jobs(tag="big", queues=["other"]).items] == [c.id]
    assert store.list_jobs(tag="re").items == []  # a whole tag, not a part of one
    assert store.list_jobs(tag="%").items == []
    first = store.list_jobs(tag="red", limit=1)
    assert [j.id for j in first.items] == [b.id] and first.next_cursor
    rest = store.list_jobs(tag="red", limit=1, cursor=first.next_cursor)
    assert [j.id for j in rest.items] == [a.id]
    # A claimed job carries them to its handler's worker.
    claimed = {c.job.id: c.job for c in store.claim("w", ["default"], 10, 30)}
    assert claimed[a.id].tags == ("red", "big") and claimed[plain.id].tags == ()


def test_a_unique_job_keeps_its_tags(store: SqlStore) -> None:
    made = store.enqueue(NewJob("echo", tags=("u",), unique_key="k", meta={"m": 1})).job
    assert store.get(made.id).tags == ("u",) and store.get(made.id).meta == {"m": 1}
    assert [j.id for j in store.list_jobs(tag="u").items] == [made.id]


def test_the_service_takes_tags_and_meta(service: JobService) -> None:
    job = service.enqueue("echo", tags=["x"], meta={"a": 1}).job
    (batch,) = service.enqueue_many([{"task_type": "echo", "tags": ["x", "y"]}])
    assert [j.id for j in service.list_jobs(tag="x").items] == [batch.job.id, job.id]
    with pytest.raises(InvalidJob) as err:
        service.enqueue_many([{"task_type": "echo"}, {"task_type": "echo", "tags": ["a b"]}])
    assert (err.value.field, err.value.index) == ("tags", 1)
    assert service.get(job.id).state is JobState.PENDING


@pytest.mark.postgres
def test_postgres_finds_a_tag_through_its_gin_index(store: SqlStore) -> None:
    if store.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL plan")
    store.enqueue_many([NewJob("echo", i) for i in range(3000)]
                       + [NewJob("echo", tags=("rare",))]
                       + [NewJob("echo", i, tags=("common",)) for i in range(500)])
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE jobq_jobs")
        plan = "\n".join(r[0] for r in conn.execute(text(
            "EXPLAIN SELECT * FROM jobq_jobs WHERE tags @> jsonb_build_array("
            "CAST('rare' AS text)) ORDER BY id DESC LIMIT 51")))
    assert "ix_jobq_jobs_tags" in plan, plan
    assert len(store.list_jobs(tag="rare").items) == 1
