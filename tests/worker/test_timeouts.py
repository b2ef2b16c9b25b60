"""Timeouts: an attempt past its timeout ends with outcome ``timeout`` and its slot frees at
once; async handlers are cancelled, def handlers abandoned (counted; past the limit the worker
starts afresh), process-isolated handlers terminated. Both backends, real workers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobq.registry import TaskRegistry, load_registry
from jobq.settings import Settings, load_settings
from jobq.store import SqlStore
from jobq.types import AttemptOutcome, Job, JobState, NewJob
from jobq.worker import Worker
from jobq.worker import executor
from jobq.harness import wait_for
from procs import Procs, env_for
from serving import serve


@pytest.fixture
def fast(db_url: str) -> Settings:
    return load_settings(database_url=db_url, lease_seconds=5, heartbeat_interval_seconds=0.2,
                         poll_interval_seconds=0.05, backoff_base_seconds=0.05,
                         backoff_cap_seconds=0.1, tasks=["timeout_tasks"],
                         shutdown_grace_seconds=1)


@pytest.fixture
def registry() -> TaskRegistry:
    return load_registry(["timeout_tasks"])


def final(store: SqlStore, *ids: int) -> Callable[[], bool]:
    return lambda: all(store.get(i, with_attempts=False).state.is_final for i in ids)


def outcomes(job: Job) -> list[AttemptOutcome]:
    return [a.outcome for a in job.attempt_log]


def test_an_async_handler_past_its_timeout_is_cancelled_retried_then_failed(
        store: SqlStore, fast: Settings, registry: TaskRegistry) -> None:
    job = store.enqueue(NewJob("to_async_sleep", {"seconds": 30}, max_attempts=2,
                               timeout_seconds=0.3)).job
    quick = store.enqueue(NewJob("to_async_sleep", {"seconds": 0}, timeout_seconds=5)).job
    began = time.monotonic()
    serve(store, fast, registry, final(store, job.id, quick.id))
    assert time.monotonic() - began < 15  # the slots were freed at the timeout, not at 30 s
    got = store.get(job.id)
    assert got.state is JobState.FAILED and got.attempts == 2
    assert outcomes(got) == [AttemptOutcome.TIMEOUT, AttemptOutcome.TIMEOUT]
    assert got.last_error == "JobTimeout: the attempt ran past its timeout of 0.3s"
    assert got.timeout_seconds == 0.3
    assert store.get(quick.id).state is JobState.DONE


def test_the_task_timeout_and_then_the_setting_apply_when_the_job_has_none(
        store: SqlStore, fast: Settings, registry: TaskRegistry) -> None:
    polite = store.enqueue(NewJob("to_polite", max_attempts=1)).job  # the task's 0.5 s
    by_setting = store.enqueue(NewJob("to_async_sleep", {"seconds": 30}, max_attempts=1)).job
    serve(store, fast.model_copy(update={"timeout_seconds": 0.4}), registry,
          final(store, polite.id, by_setting.id))
    got = store.get(polite.id)
    # Its handler saw ctx.stopped and returned, but too late: the attempt had timed out.
    assert (got.state, got.result, outcomes(got)) == (
        JobState.FAILED, None, [AttemptOutcome.TIMEOUT])
    assert "0.5s" in (got.last_error or "")
    other = store.get(by_setting.id)
    assert outcomes(other) == [AttemptOutcome.TIMEOUT] and "0.4s" in (other.last_error or "")


def test_discard_on_job_timeout_fails_at_once(
        store: SqlStore, fast: Settings, registry: TaskRegistry) -> None:
    job = store.enqueue(NewJob("to_no_retry_on_timeout", max_attempts=3)).job
    serve(store, fast, registry, final(store, job.id))
    got = store.get(job.id)
    assert (got.state, got.attempts, outcomes(got)) == (
        JobState.FAILED, 1, [AttemptOutcome.TIMEOUT])


def test_a_def_handler_past_its_timeout_is_abandoned_counted_and_its_result_dropped(
        store: SqlStore, fast: Settings, registry: TaskRegistry, tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    job = store.enqueue(NewJob("to_thread_sleep", {"seconds": 1.5, "marker": str(marker)},
                               max_attempts=1, timeout_seconds=0.3)).job
    seen: list[int] = []

    async def count(worker: Worker) -> None:
        seen.append(executor.abandoned_threads())

    serve(store, fast, registry, final(store, job.id), count)
    got = store.get(job.id)
    assert got.state is JobState.FAILED and outcomes(got) == [AttemptOutcome.TIMEOUT]
    assert not marker.exists()  # timed out while its thread still slept
    assert executor.abandoned_threads() == 1
    wait_for(marker.exists, 10, "the abandoned thread to finish its sleep")
    wait_for(lambda: executor.abandoned_threads() == 0, 5, "the thread to be counted back")
    assert store.get(job.id).state is JobState.FAILED  # its late return changed nothing


def test_a_process_isolated_handler_runs_in_a_child_with_its_outcomes(
        store: SqlStore, fast: Settings, registry: TaskRegistry, tmp_path: Path) -> None:
    ok = store.enqueue(NewJob("to_process_async")).job
    slept = store.enqueue(NewJob("to_process_sleep", {"seconds": 0,
                                                      "pidfile": str(tmp_path / "p")})).job
    failing = store.enqueue(NewJob("to_process_fail", max_attempts=3)).job
    died = store.enqueue(NewJob("to_process_exit", max_attempts=1)).job
    serve(store, fast, registry, final(store, ok.id, slept.id, failing.id, died.id))
    child_pid = store.get(ok.id).result
    assert isinstance(child_pid, int) and child_pid != os.getpid()
    s = store.get(slept.id)
    assert s.state is JobState.DONE and s.result["pid"] != os.getpid()
    assert (s.progress, s.progress_message) == (0.5, "in a child")
    f = store.get(failing.id)
    assert (f.state, f.attempts) == (JobState.FAILED, 1)  # discard_on, checked in the child
    assert f.last_error == "KeyError: 'missing'" and "Traceback" in f.attempt_log[0].traceback
    d = store.get(died.id)
    assert d.state is JobState.FAILED and "ProcessDied" in (d.last_error or "")
    assert "exit code 3" in (d.last_error or "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: reaped on a thread, moments later.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_process_isolated_handler_past_its_timeout_is_terminated(
        store: SqlStore, fast: Settings, registry: TaskRegistry, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    job = store.enqueue(NewJob("to_process_sleep", {"seconds": 60, "pidfile": str(pidfile)},
                               max_attempts=1, timeout_seconds=3)).job
    began = time.monotonic()
    serve(store, fast, registry, final(store, job.id))
    assert time.monotonic() - began < 20
    got = store.get(job.id)
    assert got.state is JobState.FAILED and outcomes(got) == [AttemptOutcome.TIMEOUT]
    pid = int(pidfile.read_text())
    wait_for(lambda: not _alive(pid), 5, "the timed-out child process to be gone")


def test_cancelling_a_running_process_isolated_job_terminates_its_child(
        store: SqlStore, fast: Settings, registry: TaskRegistry, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    job = store.enqueue(NewJob("to_process_sleep", {"seconds": 60, "pidfile": str(pidfile)},
                               max_attempts=1, timeout_seconds=120)).job
    pids: list[int] = []

    async def cancel_once_running(worker: Worker) -> None:
        if not pids and pidfile.exists() and pidfile.read_text():
            pids.append(int(pidfile.read_text()))
            await worker.db.call(store.cancel, job.id)

    serve(store, fast, registry,
          lambda: bool(pids) and not _alive(pids[0]), cancel_once_running)
    got = store.get(job.id)
    assert got.state is JobState.CANCELLED and outcomes(got) == [AttemptOutcome.CANCELLED]


@pytest.mark.slow
def test_past_the_abandoned_thread_limit_the_worker_starts_afresh_in_place(
        store: SqlStore, db_url: str, procs: Procs, tmp_path: Path) -> None:
    stuck = store.enqueue(NewJob("to_thread_sleep", {"seconds": 600}, max_attempts=1,
                                 timeout_seconds=0.5)).job
    env = env_for(db_url, JOBQ_TASKS="timeout_tasks", JOBQ_MAX_ABANDONED_THREADS="1",
                  JOBQ_LEASE_SECONDS="30")
    worker = procs.worker(env, "--concurrency", "2")
    wait_for(final(store, stuck.id), 60, "the stuck job to time out")
    wait_for(lambda: "starting afresh" in procs.logs(), 30, "the worker to restart itself")
    # The same process (exec keeps the PID), serving again: a new job runs.
    later = store.enqueue(NewJob("to_async_sleep", {"seconds": 0})).job
    wait_for(final(store, later.id), 60, "a job after the restart")
    got = store.get(later.id)
    assert got.state is JobState.DONE and worker.poll() is None
    assert str(worker.pid) in (got.worker_id or "")
    logs = procs.logs()
    assert logs.count("worker ") and logs.count("serving queues") >= 2, logs
    worker.terminate()
    assert worker.wait(30) == 0


def test_the_supervisor_knows_the_workers_restart_code() -> None:
    from jobq.api import supervisor
    from jobq.worker import worker

    assert supervisor.RESTART_EXIT_CODE == worker.RESTART_EXIT_CODE
