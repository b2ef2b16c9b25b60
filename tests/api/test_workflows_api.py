"""Workflows over HTTP, both backends: a graph in one batch by item indexes, parents and
children on GET /jobs/{id}, GET /workflows/{id}, and bad parents or callbacks as 422s that
store nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from jobq import chain, group, step
from jobq.api import create_app
from jobq.settings import Settings
from jobq.store import SqlStore
from test_api import problem, serve


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings=settings.model_copy(update={
            "webhook_secret": "s" * 32}))) as c:
        yield c


def test_a_graph_in_one_batch_and_what_the_api_shows_of_it(client: httpx.Client) -> None:
    r = client.post("/jobs/batch", json={"jobs": [
        {"task_type": "echo", "payload": 1},
        {"task_type": "echo", "payload": 2},
        {"task_type": "echo", "depends_on_items": [0, 1], "on_parent_failure": "run"},
        {"task_type": "echo", "depends_on_items": [2]},
    ]})
    assert r.status_code == 201, r.text
    a, b, c, d = [j["id"] for j in r.json()["jobs"]]
    assert [j["state"] for j in r.json()["jobs"]] == ["pending", "pending", "waiting",
                                                      "waiting"]
    got = client.get(f"/jobs/{c}").json()
    assert (got["parents"], got["children"], got["parents_left"]) == ([a, b], [d], 2)
    assert got["on_parent_failure"] == "run"
    later = client.post("/jobs", json={"task_type": "echo", "depends_on": [d]})
    assert later.status_code == 201 and later.json()["state"] == "waiting"
    flow = client.get(f"/workflows/{a}").json()
    assert [n["id"] for n in flow["jobs"]] == [a, b, c, d, later.json()["id"]]
    assert [n["parents"] for n in flow["jobs"]] == [[], [], [a, b], [c], [d]]
    assert flow["states"]["waiting"] == 3 and flow["states"]["pending"] == 2
    assert flow["final"] is False and flow["truncated"] is False
    assert client.get("/workflows/987654").status_code == 404
    assert client.get("/workflows/abc").status_code == 422


def test_chain_and_group_are_batches_the_api_takes(client: httpx.Client) -> None:
    flow = chain(step("echo", 1), group([step("echo", 2), step("echo", 3)],
                                        then=step("echo", 4)), step("echo", 5))
    r = client.post("/jobs/batch", json={"jobs": list(flow)})
    assert r.status_code == 201, r.text
    ids = [j["id"] for j in r.json()["jobs"]]
    nodes = {n["id"]: n["parents"] for n in client.get(f"/workflows/{ids[0]}").json()["jobs"]}
    assert nodes == {ids[0]: [], ids[1]: [ids[0]], ids[2]: [ids[0]],
                     ids[3]: [ids[1], ids[2]], ids[4]: [ids[3]]}


@pytest.mark.parametrize(("job", "field"), [
    ({"depends_on": [987654]}, "depends_on"),
    ({"depends_on": [0]}, "depends_on"),
    ({"depends_on": ["1"]}, "depends_on"),
    ({"depends_on": 5}, "depends_on"),
    ({"depends_on_items": [0]}, "depends_on_items"),
    ({"on_parent_failure": "run"}, "on_parent_failure"),
    ({"depends_on": [1], "on_parent_failure": "maybe"}, "on_parent_failure"),
    ({"callback_url": "ftp://example.com/x"}, "callback_url"),
    ({"callback_url": "http://127.0.0.1:9/hook"}, "callback_url"),
    ({"callback_url": "https://user:pw@example.com/"}, "callback_url"),
    ({"callback_url": "not a url"}, "callback_url"),
])
def test_bad_parents_and_callbacks_are_422_and_store_nothing(
        client: httpx.Client, store: SqlStore, job: dict, field: str) -> None:
    first = client.post("/jobs", json={"task_type": "echo"})  # id 1 exists
    r = client.post("/jobs", json={"task_type": "echo", **job})
    body = problem(r, 422)
    assert field in r.text, body
    # In a batch, an item may name an earlier one only (item 1 names itself here).
    in_batch = {**job, "depends_on_items": [1]} if "depends_on_items" in job else job
    r = client.post("/jobs/batch", json={"jobs": [{"task_type": "echo"},
                                                  {"task_type": "echo", **in_batch}]})
    problem(r, 422)
    assert [j.id for j in store.list_jobs(limit=10).items] == [first.json()["id"]]


def test_a_callback_url_needs_the_webhook_secret(settings: Settings) -> None:
    with serve(create_app(settings=settings)) as c:
        r = c.post("/jobs", json={"task_type": "echo", "callback_url": "https://example.com/h"})
        assert problem(r, 422)
        assert "JOBQ_WEBHOOK_SECRET" in r.text
