"""Prometheus metrics (prometheus-client), from the two places that can count them right.

- **The database, for what is true of the whole cluster**, read at each scrape of the API's
  ``GET /metrics``: jobs by queue and state, paused queues, the oldest due job's wait, live
  workers, and jobs created so far (the highest job id: the one count of enqueues that is
  right whichever API process, Python client or worker enqueued). Any API process answers
  the same, so several API processes behind one port need nothing more.
- **Each worker process, for what happens in it**: counters of jobs started, succeeded,
  failed, retried, snoozed, cancelled, timed out and rescued, and histograms of the queue
  wait (due → start) and the run time, by queue and task, served by the worker itself with
  ``JOBQ_METRICS_PORT`` (``jobq worker --processes N``: process i on that port + i).
  Prometheus scrapes every worker and sums (``sum by (queue) (rate(jobq_jobs_succeeded_total
  [5m]))``); a restarted worker starts from zero, which ``rate`` and ``increase`` expect.

jobq's metrics live in registries of their own, not prometheus-client's global one, so an
application that embeds jobq keeps its own metrics apart.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from jobq.types import Cancelled, ClaimedJob, Failure, Job, Outcome, Snoozed, Success

log = logging.getLogger("jobq.metrics")

#: The media type of Prometheus' text format.
PROMETHEUS_TEXT = CONTENT_TYPE_LATEST

#: A worker process's own metrics.
WORKER = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=WORKER)

_LABELS = ("queue", "task")
#: Seconds: from a job's own cost (a no-op is about a millisecond) to an hour.
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900,
            3600)


def _counter(name: str, what: str) -> Counter:
    return Counter(f"jobq_jobs_{name}", what, _LABELS, registry=WORKER)


STARTED = _counter("started", "Attempts started (claimed) by this worker.")
SUCCEEDED = _counter("succeeded", "Jobs this worker ran to done.")
FAILED = _counter("failed", "Jobs failed for good by this worker (no attempts left, or an "
                  "error its task does not retry).")
RETRIED = _counter("retried", "Attempts that failed and will be retried.")
SNOOZED = _counter("snoozed", "Attempts that snoozed (jobq.Snooze).")
CANCELLED = _counter("cancelled", "Jobs their handler cancelled (jobq.Cancel).")
TIMED_OUT = _counter("timed_out", "Attempts that ran past their timeout.")
RESCUED = _counter("rescued", "Jobs whose lease expired, rescued by this worker's rescue "
                   "loop (the worker that held them died, hung or lost the database).")
QUEUE_WAIT = Histogram("jobq_queue_wait_seconds", "From when a job was due to when an "
                       "attempt started.", _LABELS, buckets=_BUCKETS, registry=WORKER)
RUN_TIME = Histogram("jobq_run_seconds", "How long handlers ran, per attempt.", _LABELS,
                     buckets=_BUCKETS, registry=WORKER)


#: Whether this process counts: only once something can read the counts (its metrics are
#: served), so that a worker without JOBQ_METRICS_PORT spends nothing per job on them.
_counting = False


def enable() -> None:
    """Count from now on (``serve_worker_metrics`` does; so may a process that serves
    ``WORKER`` itself)."""
    global _counting
    _counting = True


def _of(job: Job) -> tuple[str, str]:
    return job.queue, job.task_type


def started(job: Job) -> None:
    if not _counting:
        return
    STARTED.labels(*_of(job)).inc()
    if job.started_at is not None:
        QUEUE_WAIT.labels(*_of(job)).observe(
            max((job.started_at - job.run_at).total_seconds(), 0.0))


def ended(claimed: ClaimedJob, outcome: Outcome | None, seconds: float) -> None:
    """An attempt's handler ended with ``outcome`` (None: the worker took the job away),
    counted as the completer will write it: a failure with no attempts left, or one its
    task does not retry, fails the job."""
    if not _counting:
        return
    labels = _of(claimed.job)
    RUN_TIME.labels(*labels).observe(seconds)
    if isinstance(outcome, Success):
        SUCCEEDED.labels(*labels).inc()
    elif isinstance(outcome, Failure):
        spent = claimed.lease.attempt >= claimed.lease.max_attempts
        (FAILED if outcome.final or spent else RETRIED).labels(*labels).inc()
        if outcome.timed_out:
            TIMED_OUT.labels(*labels).inc()
    elif isinstance(outcome, Snoozed):
        SNOOZED.labels(*labels).inc()
    elif isinstance(outcome, Cancelled):
        CANCELLED.labels(*labels).inc()


def rescued(job: Job) -> None:
    if _counting:
        RESCUED.labels(*_of(job)).inc()


def serve_worker_metrics(host: str, port: int) -> None:
    """Serve this worker's metrics at http://host:port/metrics (a thread of
    prometheus-client's)."""
    start_http_server(port, addr=host, registry=WORKER)
    enable()
    log.info("metrics at http://%s:%d/metrics", host, port)


# -- the cluster, from the database -----------------------------------------------------------


class ClusterCollector(Collector):
    """Gauges of the whole cluster, read from the database at each collect: what the
    caller's API key may see (``queues``; None: every queue)."""

    def __init__(self, service: Any, queues: Collection[str] | None) -> None:
        # service: a jobq.service.JobService (not imported: this module is below it).
        self.service = service
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        stats = self.service.stats(allowed_queues=self.queues)
        by_state = GaugeMetricFamily("jobq_jobs", "Jobs by queue and state.",
                                     labels=["queue", "state"])
        for queue, counts in stats.queues.items():
            for state, n in counts.items():
                by_state.add_metric([queue, state], n)
        yield by_state
        paused = GaugeMetricFamily("jobq_queue_paused", "1 for a paused queue.",
                                   labels=["queue"])
        for q in self.service.list_queues(allowed_queues=self.queues):
            paused.add_metric([q.name], 1.0 if q.paused else 0.0)
        yield paused
        yield GaugeMetricFamily(
            "jobq_oldest_due_job_age_seconds",
            "How long the oldest due pending job has waited (0 when none waits).",
            value=stats.oldest_pending_age_seconds or 0.0)
        yield GaugeMetricFamily("jobq_workers_live", "Workers whose heartbeat is recent.",
                                value=len(stats.workers))
        if self.queues is None:  # it tells how busy every queue is: not for a key bound to
            # some queues
            yield CounterMetricFamily(
                "jobq_jobs_created", "Jobs enqueued so far, in every queue (the highest "
                "job id).", value=self.service.store.highest_job_id())


def cluster_metrics(service: Any, queues: Collection[str] | None) -> bytes:
    """The text exposition of the cluster's gauges, for ``GET /metrics``."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(service, queues))
    data: Any = generate_latest(registry)
    return bytes(data)
