"""`jobq bench --quick` as a real subprocess on each backend: every section of its JSON is there,
with positive figures and the database's settings. Structure only: no speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from procs import REPO

#: The admin URL the suite uses (tests/conftest.py reads the same variable).
PG_ADMIN_URL = os.environ.get("JOBQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def bench_db(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        # Skips when PostgreSQL is unreachable (fails under JOBQ_REQUIRE_POSTGRES=1), as for
        # every other PostgreSQL test; the bench then makes its own databases on that server.
        request.getfixturevalue("pg_url")
    return str(request.param)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


def _check_drain(run: dict, workers: int = 2) -> None:
    assert run["done"] == run["jobs"] > 0
    assert _positive(run["seconds"]) and _positive(run["jobs_per_s"])
    assert _positive(run["steady_jobs_per_s"])
    assert run["workers"] == workers and _positive(run["concurrency"])
    assert len(run["worker_peak_rss_kb"]) == workers
    assert all(_positive(kb) for kb in run["worker_peak_rss_kb"])


def test_quick_bench(bench_db: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQ_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "jobq", "bench", "--quick", "--db", bench_db,
         "--pg-url", PG_ADMIN_URL, "--json-out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "jobq bench" in proc.stdout  # the table

    doc = json.loads(out.read_text())
    assert doc["machine"]["cpu_count"] == os.cpu_count()
    assert doc["interrupted"] is False
    assert list(doc["databases"]) == [bench_db]
    res = doc["databases"][bench_db]
    assert res["errors"] == []

    settings = res["settings"]
    if bench_db == "sqlite":
        assert settings["journal_mode"] == "wal"
        assert settings["synchronous"] == "FULL"
    else:
        for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers"):
            assert settings[name], name

    enqueue = res["enqueue"]
    python = [enqueue["python_single"], *enqueue["python_batch"]]
    assert [r["batch_size"] for r in python] == [1, 50]
    assert [r["api_processes"] for r in enqueue["rest"]] == [1, 2]
    rest = [r for k in enqueue["rest"] for r in (k["single"], *k["batch"])]
    assert [r["batch_size"] for r in rest] == [1, 50, 1, 50]
    for figure in python + rest:
        assert _positive(figure["jobs"]) and _positive(figure["jobs_per_s"]), figure
    for figure in rest:
        assert figure["errors"] == 0
        assert figure["client_threads"] == 32 and figure["client_processes"] == 1
    assert all(_positive(k["api_peak_rss_kb"]) for k in enqueue["rest"])

    assert len(res["drain"]) == 1
    _check_drain(res["drain"][0])

    pickup = res["pickup"]
    assert pickup["samples"] == 25
    assert _positive(pickup["p50_ms"]) and pickup["p99_ms"] >= pickup["p50_ms"]

    growth = res["growth"]
    assert [r["finished_before"] for r in growth["finished"]] == [0, 5_000, 20_000]
    assert [r["jobs"] for r in growth["queued"]] == [500, 2_000]
    for run in growth["finished"] + growth["queued"]:
        _check_drain(run)

    memory = res["memory"]
    assert _positive(memory["api_peak_rss_kb"])
    assert _positive(memory["worker_peak_rss_kb_max"])


def test_backfill_finished(store) -> None:  # type: ignore[no-untyped-def]
    """The growth phase's filler: n done jobs in the past, none claimable, set-based."""
    store.backfill_finished(0)
    store.backfill_finished(1_500)
    store.backfill_finished(500)
    stats = store.stats(live_worker_seconds=60)
    assert stats.jobs["done"] == 2_000 and stats.jobs["pending"] == 0
    now = store.ping()
    page = store.list_jobs(limit=2_000)
    assert len(page.items) == 2_000
    for job in page.items:
        assert job.state == "done" and job.attempts == 1 <= job.max_attempts
        assert job.created_at <= job.started_at < job.finished_at <= now
        assert job.lease_token is None and job.payload == {"backfill": True}
    assert store.claim("w", ["default"], 10, 30) == []
