"""The threads of sync handlers: reused, never more than run at once, and they end when idle."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from jobq.worker.threads import HandlerThreads


def test_one_after_another_reuses_one_thread() -> None:
    pool = HandlerThreads()

    async def go() -> list[str]:
        return [await pool.run(lambda: threading.current_thread().name) for _ in range(50)]

    names = asyncio.run(go())
    assert len(set(names)) == 1 and pool._started == 1


def test_at_once_gets_a_thread_each_and_no_more() -> None:
    pool = HandlerThreads()
    gate = threading.Barrier(8, timeout=10)  # all eight must run at the same time

    async def go() -> None:
        await asyncio.gather(*(pool.run(gate.wait) for _ in range(8)))
        await asyncio.gather(*(pool.run(time.sleep, 0.01) for _ in range(8)))

    asyncio.run(go())
    assert pool._started == 8


def test_errors_reach_the_caller_and_the_thread_goes_on() -> None:
    pool = HandlerThreads()

    def boom() -> None:
        raise ValueError("no")

    async def go() -> int:
        with pytest.raises(ValueError, match="no"):
            await pool.run(boom)
        return int(await pool.run(lambda: 7))

    assert asyncio.run(go()) == 7 and pool._started == 1


def test_a_cancelled_wait_is_not_settled_later() -> None:
    pool = HandlerThreads()
    release = threading.Event()

    async def go() -> None:
        fut = pool.run(release.wait, 10)
        fut.cancel()
        release.set()
        await asyncio.sleep(0.1)  # the thread's settle must find it cancelled, not raise
        assert fut.cancelled()
        assert await pool.run(lambda: 1) == 1

    asyncio.run(go())


def test_idle_threads_end() -> None:
    pool = HandlerThreads(idle_seconds=0.2)

    def mine() -> threading.Thread:
        time.sleep(0.05)
        return threading.current_thread()

    async def go() -> list[threading.Thread]:
        return list(await asyncio.gather(*(pool.run(mine) for _ in range(4))))

    threads = asyncio.run(go())
    assert len(set(threads)) == 4
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    # ... and work still runs afterwards, on a new thread.
    assert asyncio.run(_one(pool)) == 2 and pool._started == 5


async def _one(pool: HandlerThreads) -> int:
    return int(await pool.run(lambda: 2))


def test_a_thread_that_cannot_start_leaves_no_work_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    pool, ran = HandlerThreads(), []

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def go() -> None:
        with monkeypatch.context() as m:
            m.setattr(threading.Thread, "start", refuse)
            with pytest.raises(RuntimeError):
                pool.run(ran.append, "refused")
        assert await pool.run(ran.append, "later") is None

    asyncio.run(go())
    assert ran == ["later"]  # the refused job never ran, later or at all


def test_an_idle_thread_keeps_nothing_of_its_last_job() -> None:
    import gc
    import weakref

    pool = HandlerThreads()

    class Payload:
        pass

    def fails(p: Payload) -> None:
        raise ValueError(p)  # the error (and its frames) hold the payload

    async def go() -> weakref.ref[Payload]:
        p = Payload()
        with pytest.raises(ValueError):
            await pool.run(fails, p)
        return weakref.ref(p)

    ref = asyncio.run(go())
    deadline = time.monotonic() + 5
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
    assert ref() is None


def test_a_cancelled_handler_is_counted_abandoned_until_it_returns() -> None:
    pool = HandlerThreads()
    release = threading.Event()

    async def go() -> int:
        future = pool.run(release.wait, 10)
        await asyncio.sleep(0.05)
        future.cancel()  # a timeout or a cancel: the caller stops waiting
        await asyncio.sleep(0)
        during = pool.abandoned()
        release.set()
        for _ in range(200):
            if pool.abandoned() == 0:
                break
            await asyncio.sleep(0.01)
        return during

    assert asyncio.run(go()) == 1
    assert pool.abandoned() == 0
