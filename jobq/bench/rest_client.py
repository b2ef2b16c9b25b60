"""The REST load generator: threads of a separate process (``python -m jobq.bench.rest_client
SPEC``), each with one keep-alive connection, so that the client does not share the benchmark
process's interpreter."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from jobq.bench.figures import percentile
from jobq.bench.options import NOOP, PhaseError


def run_rest_client(api_url: str, jobs: int, batch: int, clients: int, timeout: float) -> dict:
    """Start the REST client process and return what it measured."""
    spec = {"url": api_url, "jobs": jobs, "batch": batch, "clients": clients,
            "deadline_s": timeout}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobq.bench.rest_client", json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        raise PhaseError(f"the REST client did not finish within {timeout + 30:.0f}s") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PhaseError(f"the REST client failed (exit {proc.returncode}): "
                         f"{(err or out)[-600:]}") from None


def rest_client_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Threads, each with one keep-alive connection, submitting until ``jobs`` are taken."""
    url = urlsplit(spec["url"])
    total, batch, clients = int(spec["jobs"]), int(spec["batch"]), int(spec["clients"])
    deadline = time.monotonic() + float(spec["deadline_s"])
    path = "/jobs/batch" if batch else "/jobs"
    step = batch or 1
    lock = threading.Lock()
    state = {"next": 0, "accepted": 0, "requests": 0, "errors": 0}
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    headers = {"Content-Type": "application/json"}

    def take() -> tuple[int, int] | None:
        with lock:
            if state["next"] >= total or time.monotonic() > deadline:
                return None
            first = state["next"]
            state["next"] = min(first + step, total)
            return first, state["next"] - first

    def body(first: int, n: int) -> str:
        items = [{"task_type": NOOP, "payload": {"i": first + k}} for k in range(n)]
        return json.dumps({"jobs": items} if batch else items[0])

    def client() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            start.wait(60)
        except threading.BrokenBarrierError:
            return
        while (work := take()) is not None:
            payload = body(*work)
            began = time.perf_counter()
            try:
                conn.request("POST", path, payload, headers)
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
                with lock:
                    state["errors"] += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                continue
            took = time.perf_counter() - began
            with lock:
                state["requests"] += 1
                statuses[str(code)] = statuses.get(str(code), 0) + 1
                latencies.append(took)
                if code in (200, 201):
                    state["accepted"] += work[1]
                else:
                    state["errors"] += 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait(60)
    began = time.perf_counter()
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0) + 5)
    elapsed = time.perf_counter() - began
    return {
        "jobs": state["accepted"], "requests": state["requests"], "errors": state["errors"],
        "statuses": statuses, "seconds": round(elapsed, 3),
        "jobs_per_s": round(state["accepted"] / elapsed, 1) if elapsed > 0 else None,
        "request_p50_ms": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
        "request_p99_ms": round(percentile(latencies, 99) * 1000, 2) if latencies else None,
        "client_processes": 1, "client_threads": clients, "batch_size": batch or 1,
        "timed_out": time.monotonic() > deadline, "error_samples": errors,
    }


if __name__ == "__main__":
    if len(sys.argv) == 2:
        print(json.dumps(rest_client_main(json.loads(sys.argv[1]))), flush=True)
    else:
        sys.exit("usage: jobq bench (this module's own entry point is for its REST client)")
