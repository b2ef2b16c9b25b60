"""Prometheus metrics, read back with prometheus-client's own parser: the API's ``GET
/metrics`` (the cluster's gauges, from the database) and a real worker process's
``JOBQ_METRICS_PORT`` (its counters and histograms), on every backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete

from jobq.api import create_app
from jobq.harness import free_port, wait_until
from jobq.service import JobService
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.store.tables import api_keys
from jobq.types import JobState
from procs import Procs, env_for
from test_api import serve

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    """Every sample, by name and sorted labels (the parser refuses malformed text)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def client(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings=settings)) as c:
        yield c


def test_the_api_serves_the_clusters_gauges(client: httpx.Client, service: JobService,
                                            store: SqlStore, settings: Settings) -> None:
    for i in range(3):
        service.enqueue("echo", i, queue="a")
    service.enqueue("echo", "b", queue="b")
    last = service.enqueue("echo", "c", queue="b", delay_seconds=3600).job
    store.claim("w-metrics", ["a"], 1, 30)
    service.pause_queue("b")

    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    m = scrape(resp.text)
    assert value(m, "jobq_jobs", queue="a", state="pending") == 2
    assert value(m, "jobq_jobs", queue="a", state="running") == 1
    assert value(m, "jobq_jobs", queue="b", state="pending") == 2
    assert value(m, "jobq_jobs", queue="b", state="done") == 0
    assert value(m, "jobq_queue_paused", queue="b") == 1
    assert value(m, "jobq_queue_paused", queue="a") == 0
    assert value(m, "jobq_jobs_created_total") == last.id
    assert value(m, "jobq_workers_live") == 0
    assert (value(m, "jobq_oldest_due_job_age_seconds") or 0) >= 0
    assert client.get("/metrics?x=1").status_code == 422

    # A key bound to queue a sees queue a only, and not how many jobs all queues made.
    with store.engine.begin() as conn:
        conn.execute(delete(api_keys))
    try:
        _, token = service.create_key("prom", ["a"], ["read"])
        with serve(create_app(settings=settings)) as keyed:
            assert keyed.get("/metrics").status_code == 401
            resp = keyed.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 200, resp.text
            m = scrape(resp.text)
            assert {dict(labels).get("queue") for (name, labels) in m
                    if name == "jobq_jobs"} == {"a"}
            assert value(m, "jobq_jobs_created_total") is None
    finally:
        with store.engine.begin() as conn:
            conn.execute(delete(api_keys))


def test_a_worker_serves_its_counters_and_histograms(
    settings: Settings, service: JobService, store: SqlStore, procs: Procs
) -> None:
    # A job whose holder vanished (a lease of half a second, never renewed): the worker's
    # rescue loop takes it back, then runs it.
    ghost = service.enqueue("echo", "ghost").job
    assert [c.job.id for c in store.claim("w-ghost", ["default"], 1, 0.5)] == [ghost.id]
    done = [service.enqueue("echo", i).job.id for i in range(5)]
    failed = [service.enqueue("fail", i, max_attempts=2).job.id for i in range(2)]
    late = service.enqueue("sleep", 60, max_attempts=1, timeout_seconds=0.2).job.id
    port = free_port()
    procs.worker(env_for(settings.database_url, JOBQ_METRICS_PORT=str(port),
                         JOBQ_TASKS="jobq.builtin_tasks", JOBQ_BACKOFF_BASE_SECONDS="0",
                         JOBQ_BACKOFF_CAP_SECONDS="0"))

    def all_final() -> bool:
        return all(store.get(i).state.is_final for i in [ghost.id, *done, *failed, late])

    assert wait_until(all_final, 60), [store.get(i).state for i in [ghost.id, *done, *failed]]
    assert all(store.get(i).state is JobState.FAILED for i in failed)

    def scraped() -> Samples | None:
        try:
            return scrape(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        except httpx.HTTPError:
            return None

    assert wait_until(lambda: scraped() is not None, 30)
    m = scraped()
    assert m is not None
    echo = {"queue": "default", "task": "echo"}
    fail = {"queue": "default", "task": "fail"}
    assert value(m, "jobq_jobs_started_total", **echo) == 6
    assert value(m, "jobq_jobs_succeeded_total", **echo) == 6
    assert value(m, "jobq_jobs_rescued_total", **echo) == 1
    assert value(m, "jobq_jobs_started_total", **fail) == 4
    assert value(m, "jobq_jobs_retried_total", **fail) == 2
    assert value(m, "jobq_jobs_failed_total", **fail) == 2
    assert value(m, "jobq_run_seconds_count", **echo) == 6
    assert value(m, "jobq_queue_wait_seconds_count", **fail) == 4
    assert value(m, "jobq_run_seconds_bucket", le="+Inf", **fail) == 4
    sleep = {"queue": "default", "task": "sleep"}
    assert value(m, "jobq_jobs_timed_out_total", **sleep) == 1
    assert value(m, "jobq_jobs_failed_total", **sleep) == 1
    assert value(m, "process_cpu_seconds_total") is not None
