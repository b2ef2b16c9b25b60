"""``ctx.stopped`` (``jobq.registry.StopFlag``): an Event to its handler, made on first wait."""

from __future__ import annotations

import threading
import time

from jobq.registry import JobContext, StopFlag


def test_a_flag_not_set_waits_its_timeout_and_says_so() -> None:
    flag = StopFlag()
    began = time.monotonic()
    assert flag.wait(0.05) is False and not flag.is_set()
    assert time.monotonic() - began >= 0.05


def test_a_set_from_another_thread_wakes_a_waiting_handler_at_once() -> None:
    flag = StopFlag()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(flag.wait(10)))
    waiter.start()
    time.sleep(0.05)  # it waits on its Event now
    began = time.monotonic()
    flag.set()
    waiter.join(5)
    assert woke == [True] and time.monotonic() - began < 1
    assert flag.is_set() and flag.wait(0) is True


def test_a_flag_set_before_anyone_waited_is_seen_by_every_later_wait() -> None:
    flag = StopFlag()
    flag.set()
    assert flag.is_set() and flag.wait(10) is True


def test_many_waiters_and_a_set_racing_them_all_wake() -> None:
    for _ in range(50):
        flag = StopFlag()
        woke: list[bool] = []
        waiters = [threading.Thread(target=lambda: woke.append(flag.wait(5))) for _ in range(4)]
        for w in waiters:
            w.start()
        flag.set()
        for w in waiters:
            w.join(6)
        assert woke == [True] * 4


def test_a_context_made_without_one_has_its_own_flag() -> None:
    a = JobContext(job_id=1, attempt=1, max_attempts=1, queue="q", task_type="t",
                   worker_id="w")
    b = JobContext(job_id=2, attempt=1, max_attempts=1, queue="q", task_type="t",
                   worker_id="w")
    a.stopped.set()
    assert a.stopped.is_set() and not b.stopped.is_set()
