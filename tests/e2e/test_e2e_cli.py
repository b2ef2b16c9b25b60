"""End to end, as a user would: the `jobq` CLI and the brief's own commands, as real processes
talking real HTTP. Both backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jobq.harness import free_port, wait_for
from procs import REPO, Procs, env_for

pytestmark = pytest.mark.slow


def _wait_healthy(base: str, procs: Procs, timeout: float = 30) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout, f"{base}/healthz", interval=0.2)
    except AssertionError:
        print(procs.logs())
        raise


def _wait_job(base: str, job_id: int, state: str, timeout: float = 30) -> dict:
    def reached() -> dict | None:
        job = httpx.get(f"{base}/jobs/{job_id}", timeout=5).json()
        return job if job["state"] == state else None

    return wait_for(reached, timeout, f"job {job_id} to be {state}", interval=0.1)  # type: ignore[return-value]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie child of someone else still answers kill(0); look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_jobq_up_runs_api_and_two_workers_and_ctrl_c_stops_all(
    db_url: str, procs: Procs, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = env_for(db_url)
    up = procs.start([sys.executable, "-m", "jobq", "up", "--workers", "2", "--port", str(port)],
                     env, "up", cwd=tmp_path)
    _wait_healthy(base, procs)

    created = httpx.post(f"{base}/jobs", params={"task_type": "test", "payload": "hello"})
    assert created.status_code == 201, created.text
    job = _wait_job(base, created.json()["id"], "done")
    assert job["attempts"] == 2 and job["payload"] == "hello"

    cli = subprocess.run(
        [sys.executable, "-m", "jobq", "enqueue", "echo", "--payload", '{"a": [1, 2]}'],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    echoed = _wait_job(base, json.loads(cli.stdout)["id"], "done")
    assert echoed["result"] == {"a": [1, 2]}

    stats = wait_for(lambda: (s := httpx.get(f"{base}/stats").json())["jobs"]["done"] == 2
                     and len(s["workers"]) == 2 and s, 20, "stats with 2 done and 2 workers")
    worker_pids = [w["pid"] for w in stats["workers"]]  # type: ignore[index]

    table = subprocess.run([sys.executable, "-m", "jobq", "stats"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "done" in table.stdout and "default" in table.stdout

    os.kill(up.pid, signal.SIGINT)
    assert up.wait(30) == 0, procs.logs()
    wait_for(lambda: all(_gone(pid) for pid in worker_pids), 10, "the workers to exit")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/healthz", timeout=1)


def test_the_briefs_commands(db_url: str, procs: Procs) -> None:
    """`python -m uvicorn api.main:app`, `python -m worker.worker` and the brief's curl calls,
    from the repository root."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = env_for(db_url)
    procs.start([sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)],
                env, "uvicorn", cwd=REPO)
    worker = procs.start([sys.executable, "-m", "worker.worker"], env, "worker", cwd=REPO)
    _wait_healthy(base, procs)

    curl = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{base}/jobs?task_type=test&payload=hello"],
        capture_output=True, text=True, timeout=30,
    ) if _has_curl() else None
    if curl is not None:
        assert curl.returncode == 0, curl.stderr
        job_id = json.loads(curl.stdout)["id"]
    else:
        job_id = httpx.post(f"{base}/jobs?task_type=test&payload=hello").json()["id"]
    job = _wait_job(base, job_id, "done")
    assert job["attempts"] == 2

    stats = httpx.get(f"{base}/stats").json()
    assert stats["jobs"]["done"] == 1
    assert set(stats["jobs"]) == {"pending", "running", "done", "failed", "cancelled",
                                  "waiting"}
    assert httpx.get(f"{base}/docs").status_code == 200

    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(20) == 0


def _has_curl() -> bool:
    return any(os.access(os.path.join(d, "curl"), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep))


def test_help_names_each_options_variable_and_default() -> None:
    """Rich's markup swallowed "[env …]" whole: the help must show it."""
    from jobq.settings import Settings

    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "jobq", "worker", "--help"], env=env,
                         capture_output=True, text=True, timeout=60).stdout
    default = Settings.model_fields["concurrency"].default
    assert f"(env JOBQ_CONCURRENCY; default {default})" in out
    assert "(env JOBQ_DATABASE_URL; default sqlite:///jobq.db)" in out
    assert "(env JOBQ_PROCESSES; default 1)" in out


def test_bad_setting_stops_the_program_with_a_message_naming_it(tmp_path: Path) -> None:
    env = {**os.environ, "JOBQ_MAX_ATTEMPTS": "zero", "JOBQ_DATABASE_URL":
           f"sqlite:///{tmp_path / 'x.db'}"}
    result = subprocess.run([sys.executable, "-m", "jobq", "worker"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "JOBQ_MAX_ATTEMPTS" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_processes_option_runs_n_workers_and_sigterm_stops_them(
    db_url: str, procs: Procs, store
) -> None:  # type: ignore[no-untyped-def]
    from jobq.types import JobState, NewJob

    sup = procs.start([sys.executable, "-m", "jobq", "worker", "--processes", "2",
                       "--concurrency", "3"], env_for(db_url), "workers")
    live = wait_for(lambda: len(w := store.stats(live_worker_seconds=60).workers) == 2 and w,
                    30, "two live workers")
    ids = [store.enqueue(NewJob("echo", i)).job.id for i in range(20)]
    wait_for(lambda: all(store.get(i, with_attempts=False).state is JobState.DONE for i in ids),
             30, "the jobs to be done")
    os.kill(sup.pid, signal.SIGTERM)
    assert sup.wait(30) == 0, procs.logs()
    wait_for(lambda: all(_gone(w.pid) for w in live), 10, "the worker processes to exit")  # type: ignore[union-attr]
    assert store.stats(live_worker_seconds=60).workers == []


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` that serve (multiprocessing's spawned workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_api_processes_option_serves_one_port_from_n_processes_restarts_and_stops_them(
    db_url: str, procs: Procs
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = procs.start([sys.executable, "-m", "jobq", "api", "--processes", "2", "--port",
                       str(port)], env_for(db_url), "api")
    children: list[int] = []
    try:
        _wait_healthy(base, procs)
        children = wait_for(lambda: len(c := _children(api.pid)) == 2 and c, 30,
                            "two API processes")  # type: ignore[assignment]
        ids = []
        for i in range(20):  # a new connection each, so the kernel spreads them
            resp = httpx.post(f"{base}/jobs", json={"task_type": "echo", "payload": i})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
        assert len(set(ids)) == 20
        assert httpx.get(f"{base}/stats").json()["jobs"]["pending"] == 20

        os.kill(children[0], signal.SIGKILL)  # uvicorn starts another in its place
        wait_for(lambda: _gone(children[0]), 10, "the killed API process to be gone")
        children = wait_for(lambda: len(c := _children(api.pid)) == 2 and c, 30,
                            "a new second API process")  # type: ignore[assignment]
        for _ in range(10):
            assert httpx.get(f"{base}/stats").json()["jobs"]["pending"] == 20
        os.kill(api.pid, signal.SIGTERM)
        assert api.wait(30) == 0, procs.logs()
        wait_for(lambda: all(_gone(c) for c in children), 10, "the API processes to exit")

        # A supervisor killed outright leaves no orphan serving the port.
        api = procs.start([sys.executable, "-m", "jobq", "api", "--processes", "2", "--port",
                           str(port)], env_for(db_url), "api")
        _wait_healthy(base, procs)
        children = wait_for(lambda: len(c := _children(api.pid)) == 2 and c, 30,
                            "two API processes again")  # type: ignore[assignment]
        os.kill(api.pid, signal.SIGKILL)
        api.wait(10)
        wait_for(lambda: all(_gone(c) for c in children), 20, "the orphans to stop")
    finally:
        for child in children:
            if not _gone(child):
                os.kill(child, signal.SIGKILL)


def test_api_processes_option_fails_loudly_when_it_cannot_start(procs: Procs) -> None:
    env = env_for("postgresql://postgres@127.0.0.1:1/nowhere", JOBQ_DB_TIMEOUT_SECONDS="2")
    api = procs.start([sys.executable, "-m", "jobq", "api", "--processes", "2", "--port",
                       str(free_port())], env, "api")
    assert api.wait(60) == 1, procs.logs()
    assert "cannot start the API" in procs.logs()


def test_a_bad_cron_expression_stops_the_worker_at_start_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "nightly_tasks.py").write_text(
        "from jobq import task\n"
        "@task('nightly', schedule='0 25 * * *')\n"
        "def nightly(payload):\n"
        "    pass\n")
    env = {**os.environ, "JOBQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "JOBQ_TASKS": "nightly_tasks", "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "jobq", "worker"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "schedule 'nightly': bad cron expression '0 25 * * *': Bad hour" in result.stderr
    assert "Traceback" not in result.stderr


def test_jobq_schedules_lists_them_as_a_table_and_as_json(db_url: str, store) -> None:  # type: ignore[no-untyped-def]
    from jobq.schedules import make_schedule

    store.declare_schedules([make_schedule("echo", "*/5 * * * *", name="five",
                                           tz="Europe/Berlin")])
    env = {**os.environ, "JOBQ_DATABASE_URL": db_url, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "jobq", "schedules", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert (row["name"], row["task_type"], row["expression"], row["tz"]) == (
        "five", "echo", "*/5 * * * *", "Europe/Berlin")
    assert row["last_run_at"] is None and row["next_run_at"]
    table = subprocess.run([sys.executable, "-m", "jobq", "schedules"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "five" in table.stdout and "*/5 * * * * (Europe/Berlin)" in table.stdout
