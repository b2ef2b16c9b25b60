"""The enqueue phase: one job per call and batches, from the Python client in this process and
over REST from a separate client process against 1 and N API processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from jobq.bench.backends import Backend
from jobq.bench.context import Bench
from jobq.bench.figures import api_tree_peak_rss_kb, enqueue_batch
from jobq.bench.options import NOOP, PhaseError
from jobq.bench.rest_client import run_rest_client


def enqueue_phase(bench: Bench, backend: Backend, tag: str) -> dict[str, Any]:
    """The four enqueue figures, against one database with the API running. A figure
    that fails is recorded as {"error": ...} and the others are still measured."""
    o = bench.opts
    url = backend.new_url("enqueue")
    out: dict[str, Any] = {}
    failures: list[str] = []

    def figure(into: Any, key: str | None, label: str, total: int | None,
               fn: Callable[[Callable[[int], None]], dict[str, Any]]) -> None:
        """Measure one figure into ``into[key]`` (or append it to the list ``into``)."""
        try:
            with bench.step(f"{tag}: enqueue, {label}", total) as adv:
                result = fn(adv)
            if result.get("errors") or result.get("timed_out"):
                raise PhaseError(
                    f"{result['errors']} failed requests {result['statuses']} "
                    f"{result['error_samples']}; timed out: {result['timed_out']}")
        except PhaseError as exc:
            result = {"error": str(exc)}
            failures.append(f"{label}: {exc}")
        if key is None:
            into.append(result)
        else:
            into[key] = result

    service = bench.service(url)
    n, c = o.enqueue_jobs, o.clients
    out["python_batch"], out["rest"] = [], []
    try:
        figure(out, "python_single", "Python client, 1 job per call", n,
               lambda adv: _timed_enqueue(bench, service, n, 1, adv))
        for b in o.batch_sizes:
            nb = max(10 * n, 20 * b)
            figure(out["python_batch"], None, f"Python client, batches of {b}", nb,
                   lambda adv, nb=nb, b=b: _timed_enqueue(bench, service, nb, b, adv))
        for k in o.api_processes:
            rest: dict[str, Any] = {"api_processes": k, "batch": []}
            out["rest"].append(rest)
            with bench.processes(url) as procs:
                api = procs.start_api("--processes", str(k))
                with bench.step(f"{tag}: starting the API ({k} process(es))", None):
                    if not procs.wait_api(60):
                        bench.alive([api], "API start")
                        raise PhaseError("the API did not answer /healthz within 60s")
                figure(rest, "single", f"REST, 1 job per request, {c} clients, {k} API "
                       "process(es)", None,
                       lambda adv: run_rest_client(procs.api_url, n, 0, c, o.phase_timeout))
                for b in o.batch_sizes:
                    nb = max(10 * n, 4 * c * b)  # several requests per client thread
                    figure(rest["batch"], None,
                           f"REST, batches of {b}, {c} clients, {k} API process(es)", None,
                           lambda adv, nb=nb, b=b: run_rest_client(
                               procs.api_url, nb, b, c, o.phase_timeout))
                bench.alive([api], "enqueue over REST")
                rss = api_tree_peak_rss_kb(api.pid)
                rest["api_peak_rss_kb"] = rss
                if k == 1:
                    out["api_peak_rss_kb"] = rss
    finally:
        service.close()
        backend.drop(url)
    if failures:
        out["errors"] = failures
    return out


def _timed_enqueue(bench: Bench, service: Any, n: int, batch: int,
                   advance: Callable[[int], None]) -> dict[str, Any]:
    deadline = bench.deadline()
    began = time.perf_counter()
    done = 0
    while done < n:
        bench.check_deadline(deadline, "enqueue")
        if batch == 1:
            service.enqueue(NOOP, {"i": done})
            done += 1
        else:
            k = min(batch, n - done)
            enqueue_batch(service, [{"i": done + j} for j in range(k)], NOOP)
            done += k
        if done % 100 < batch:
            advance(done)
    elapsed = time.perf_counter() - began
    return {"jobs": n, "seconds": round(elapsed, 3), "jobs_per_s": round(n / elapsed, 1),
            "batch_size": batch, "client": "in-process JobService, one thread"}
