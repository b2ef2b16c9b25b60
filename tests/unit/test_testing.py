"""jobq.testing: a throw-away queue whose drain() runs jobs in the test's process with jobq's
real semantics (results, retries, Snooze, Cancel, typed payloads, follow-up jobs), and the
``jobq_queue`` pytest fixture as an application's test suite gets it. SQLite only, by
design: the helper's queue is a file of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jobq.testing
from jobq.payloads import InvalidPayload
from jobq.types import JobState
from procs import REPO, SUPPORT

TASKS = ["testing_tasks"]


def test_drain_runs_jobs_with_their_real_semantics(monkeypatch: pytest.MonkeyPatch) -> None:
    with jobq.testing.queue(tasks=TASKS) as q:
        monkeypatch.setenv("JOBQ_DATABASE_URL", q.database_url)  # for jobq.connect() in tasks
        welcome = q.enqueue("t_welcome", {"email": "ana@example.com"}).job
        flaky = q.enqueue("t_flaky", {"fail_times": 2}).job
        broken = q.enqueue("t_broken", None).job
        later = q.enqueue("t_later", None).job
        refused = q.enqueue("t_refuse", None).job
        fan = q.enqueue("t_fan_out", 3, queue="other").job
        scheduled = q.enqueue("t_welcome", {"email": "b@example.com"}, delay_seconds=3600).job

        drained = q.drain()

        by_id = {j.id: j for j in drained.jobs}
        assert by_id[welcome.id].result == {"sent_to": "ana@example.com"}
        # Retried without waiting (no backoff here), each attempt recorded.
        assert by_id[flaky.id].state is JobState.DONE and by_id[flaky.id].result == 3
        assert [a.error for a in by_id[flaky.id].attempt_log if a.error] == [
            "ConnectionError: attempt 1 failed", "ConnectionError: attempt 2 failed"]
        assert by_id[broken.id].state is JobState.FAILED and by_id[broken.id].attempts == 3
        assert by_id[later.id].state is JobState.PENDING  # snoozed for an hour
        assert by_id[refused.id].state is JobState.CANCELLED
        assert by_id[refused.id].last_error == "not for us"
        assert by_id[fan.id].result == 3
        follow_ups = [j for j in drained.done if j.id > scheduled.id]
        assert sorted(j.result["sent_to"] for j in follow_ups) == [
            "user0@example.com", "user1@example.com", "user2@example.com"]
        assert {j.id for j in drained.pending} == {later.id, scheduled.id}
        assert {j.id for j in drained.failed} == {broken.id}

        # A second drain finds only what is still waiting, and runs nothing.
        again = q.drain()
        assert {j.id for j in again.jobs} == {later.id, scheduled.id}
        assert again.done == []

        # Typed payloads are checked at submission, as in production.
        with pytest.raises(InvalidPayload):
            q.enqueue("t_welcome", {"mail": "x"})


def test_a_drain_that_cannot_finish_raises() -> None:
    with jobq.testing.queue(tasks=TASKS, shutdown_grace_seconds=0.2) as q:
        job = q.enqueue("t_hang", None).job
        with pytest.raises(TimeoutError, match="still running or due"):
            q.drain(timeout=1)
        # Released when the drain gave up: pending again, its attempt not charged.
        assert q.get(job.id).state is JobState.PENDING


def test_the_pytest_fixture_in_an_applications_suite(tmp_path: Path) -> None:
    """``jobq_queue`` comes with jobq (a pytest11 entry point): a project's tests use it with
    no conftest, its tasks from JOBQ_TASKS."""
    (tmp_path / "test_app.py").write_text(textwrap.dedent("""
        def test_welcome(jobq_queue):
            jobq_queue.enqueue("t_welcome", {"email": "ana@example.com"})
            drained = jobq_queue.drain()
            assert [j.result for j in drained.done] == [{"sent_to": "ana@example.com"}]
    """))
    env = {**os.environ, "JOBQ_TASKS": "testing_tasks",
           "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)])}
    env.pop("JOBQ_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path / "test_app.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
