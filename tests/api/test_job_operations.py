"""Job operations in bulk: cancel and retry every job that matches a filter, through the
service, over REST (``POST /jobs/cancel``, ``POST /jobs/retry``) and in the CLI
(``jobq jobs list|show|cancel|retry``), on every backend, with real processes and HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jobq.api import create_app
from jobq.errors import InvalidJob, QueueNotFound
from jobq.service import JobService
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.types import AttemptOutcome, JobState
from procs import REPO
from test_api import problem, serve


def failed_jobs(svc: JobService, store: SqlStore, n: int, **options: Any) -> list[int]:
    """``n`` jobs enqueued with ``options`` and failed for good."""
    ids = [svc.enqueue("echo", i, max_attempts=1, **options).job.id for i in range(n)]
    queue = options.get("queue", "default")
    for claimed in store.claim("w-ops", [queue], n, 30):
        store.fail(claimed.lease, "boom", "", 0)
    assert all(store.get(i).state is JobState.FAILED for i in ids)
    return ids


def states(store: SqlStore, ids: list[int]) -> list[str]:
    return [store.get(i).state.value for i in ids]


def test_retry_matching_takes_the_filter_and_the_limit(service: JobService,
                                                       store: SqlStore) -> None:
    emails = failed_jobs(service, store, 5, queue="emails")
    other = failed_jobs(service, store, 2, queue="other")
    cancelled = service.enqueue("echo", "c", queue="emails").job.id
    service.cancel(cancelled)

    r = service.retry_matching(queue="emails", limit=3)
    assert (r.changed, r.more) == (3, True)
    assert states(store, emails) == ["pending"] * 3 + ["failed"] * 2  # oldest first
    r = service.retry_matching(queue="emails")
    assert (r.changed, r.more) == (2, False)
    assert states(store, other) == ["failed", "failed"]
    assert store.get(cancelled).state is JobState.CANCELLED  # failed only, by default
    r = service.retry_matching(state="cancelled")
    assert (r.changed, r.more) == (1, False)
    assert store.get(cancelled).state is JobState.PENDING
    assert store.get(emails[0]).attempts == 0  # a fresh budget, as a retry of one gives

    with pytest.raises(InvalidJob, match="failed or cancelled"):
        service.retry_matching(state="pending")
    with pytest.raises(InvalidJob, match="limit"):
        service.retry_matching(limit=0)
    with pytest.raises(QueueNotFound):
        service.retry_matching(queue="other", allowed_queues=["emails"])
    # A key bound to some queues retries only theirs.
    assert service.retry_matching(allowed_queues=["emails"]).changed == 0
    assert service.retry_matching(allowed_queues=["other"]).changed == 2


def test_retry_matching_keeps_unique_keys_unique(service: JobService,
                                                 store: SqlStore) -> None:
    a1, a2 = failed_jobs(service, store, 1, unique_key="acct-1") + failed_jobs(
        service, store, 1, unique_key="acct-1")
    b = failed_jobs(service, store, 1, unique_key="acct-2")[0]
    live = service.enqueue("echo", "live", unique_key="acct-2").job.id
    r = service.retry_matching()
    assert (r.changed, r.more) == (1, True)  # a1; a2 (same key) and b (held by live) left
    assert states(store, [a1, a2, b, live]) == ["pending", "failed", "failed", "pending"]


def test_cancel_matching(service: JobService, store: SqlStore) -> None:
    pending = [service.enqueue("echo", i, queue="q1").job.id for i in range(3)]
    other_task = service.enqueue("noop", None, queue="q1").job.id
    (running,) = store.claim("w-ops", ["q1"], 1, 30)
    assert running.job.id == pending[0]
    elsewhere = service.enqueue("echo", "x", queue="q2").job.id

    with pytest.raises(InvalidJob, match="at least one filter"):
        service.cancel_matching()
    with pytest.raises(InvalidJob, match="pending or running"):
        service.cancel_matching(state="done", queue="q1")
    r = service.cancel_matching(queue="q1", task_type="echo")
    assert (r.changed, r.more) == (3, False)
    assert states(store, pending) == ["cancelled"] * 3
    assert store.get(other_task).state is JobState.PENDING
    assert store.get(elsewhere).state is JobState.PENDING
    # The running one's attempt is recorded as cancelled; its late completion changes nothing.
    log = store.get(running.job.id).attempt_log
    assert [a.outcome for a in log] == [AttemptOutcome.CANCELLED]
    assert not store.complete(running.lease, "late")
    assert service.cancel_matching(state="pending").changed == 2


# -- REST -------------------------------------------------------------------------------------


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings=settings)) as c:
        yield c


def test_rest_bulk_cancel_and_retry(client: httpx.Client, service: JobService,
                                    store: SqlStore) -> None:
    ids = failed_jobs(service, store, 4, queue="emails")
    resp = client.post("/jobs/retry", json={"queue": "emails", "limit": 3})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"changed": 3, "more": True}
    assert client.post("/jobs/retry", json={"queue": "emails"}).json() == {
        "changed": 1, "more": False}
    assert states(store, ids) == ["pending"] * 4
    resp = client.post("/jobs/cancel", json={"queue": "emails", "state": "pending"})
    assert resp.json() == {"changed": 4, "more": False}

    for body, field in (({}, "state"), ({"state": "done", "queue": "emails"}, "state"),
                        ({"queue": "emails", "limit": 0}, "limit"),
                        ({"queue": "emails", "limit": True}, "limit"),
                        ({"queue": "emails", "colour": 1}, "colour")):
        p = problem(client.post("/jobs/cancel", json=body), 422)
        assert p["errors"][0]["loc"][-1] == field, (body, p)
    problem(client.post("/jobs/retry", json={"state": "running"}), 422)
    assert states(store, ids) == ["cancelled"] * 4  # nothing changed by the refusals


# -- CLI --------------------------------------------------------------------------------------


def jobq_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBQ_DATABASE_URL": settings.database_url,
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "jobq", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_jobs_list_show_cancel_retry(settings: Settings, service: JobService,
                                         store: SqlStore) -> None:
    ids = failed_jobs(service, store, 3, queue="emails")
    out = jobq_cli(settings, "jobs", "list", "--state", "failed", "--json")
    assert out.returncode == 0, out.stderr
    assert [j["id"] for j in json.loads(out.stdout)["items"]] == sorted(ids, reverse=True)
    out = jobq_cli(settings, "jobs", "list", "--queue", "emails")
    assert out.returncode == 0 and "failed" in out.stdout and "boom" in out.stdout

    out = jobq_cli(settings, "jobs", "show", str(ids[0]), "--json")
    shown = json.loads(out.stdout)
    assert shown["id"] == ids[0] and shown["attempt_log"][0]["error"] == "boom"
    out = jobq_cli(settings, "jobs", "show", str(ids[0]))
    assert out.returncode == 0 and "attempt 1" in out.stdout
    child = service.enqueue("echo", depends_on=[ids[0]]).job.id  # cancelled: its parent failed
    shown = json.loads(jobq_cli(settings, "jobs", "show", str(child), "--json").stdout)
    assert (shown["parents"], shown["state"]) == ([ids[0]], "cancelled")
    assert json.loads(jobq_cli(settings, "jobs", "show", str(ids[0]), "--json").stdout)[
        "children"] == [child]

    out = jobq_cli(settings, "jobs", "retry", "--state", "failed", "--queue", "emails")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3 job(s) retried"
    assert states(store, ids) == ["pending"] * 3
    out = jobq_cli(settings, "jobs", "cancel", str(ids[0]))
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "cancelled"
    out = jobq_cli(settings, "jobs", "cancel", "--queue", "emails", "--json")
    assert json.loads(out.stdout) == {"changed": 2, "more": False}
    out = jobq_cli(settings, "jobs", "cancel")
    assert out.returncode == 1 and "at least one filter" in out.stderr
    out = jobq_cli(settings, "jobs", "retry", str(ids[0]), "--queue", "emails")
    assert out.returncode == 2 and "not both" in out.stderr


# -- limits over REST and in the CLI ----------------------------------------------------------


def test_rest_sets_and_shows_queue_limits(client: httpx.Client, store: SqlStore) -> None:
    resp = client.patch("/queues/emails", json={"concurrency": 5})
    assert resp.status_code == 200, resp.text
    assert {k: resp.json()[k] for k in ("concurrency", "rate", "burst")} == {
        "concurrency": 5, "rate": None, "burst": None}
    body = client.patch("/queues/emails", json={"rate": 2.5}).json()
    assert (body["concurrency"], body["rate"], body["burst"]) == (5, 2.5, 3)  # kept, defaulted
    body = client.patch("/queues/emails", json={"burst": 10}).json()
    assert (body["rate"], body["burst"]) == (2.5, 10)
    body = client.patch("/queues/emails", json={"concurrency": None, "rate": None}).json()
    assert (body["concurrency"], body["rate"], body["burst"]) == (None, None, None)
    client.patch("/queues/emails", json={"concurrency": 1})
    listed = {q["name"]: q for q in client.get("/queues").json()["queues"]}
    assert listed["emails"]["concurrency"] == 1
    for bad, field in (({"concurrency": 0}, "concurrency"), ({"rate": 0}, "rate"),
                       ({"concurrency": "5"}, "concurrency"), ({"burst": 3}, "burst"),
                       ({"colour": 1}, "colour")):
        p = problem(client.patch("/queues/emails", json=bad), 422)
        assert p["errors"][0]["loc"][-1] == field, (bad, p)
    assert store.list_queues(only=["emails"])[0].concurrency == 1  # refusals changed nothing
    made = client.post("/jobs", json={"task_type": "echo", "concurrency_key": "acct-1",
                                      "concurrency_limit": 2})
    assert made.status_code == 201, made.text
    assert (made.json()["concurrency_key"], made.json()["concurrency_limit"]) == ("acct-1", 2)
    problem(client.post("/jobs", json={"task_type": "echo", "concurrency_limit": 2}), 422)


def test_cli_queues_set(settings: Settings, store: SqlStore) -> None:
    out = jobq_cli(settings, "queues", "set", "emails", "--concurrency", "3", "--rate", "1.5")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["burst"] == 2
    out = jobq_cli(settings, "queues", "set", "emails", "--no-rate")
    assert (json.loads(out.stdout)["concurrency"], json.loads(out.stdout)["rate"]) == (3, None)
    out = jobq_cli(settings, "queues", "list")
    assert out.returncode == 0 and "≤3 running" in out.stdout
