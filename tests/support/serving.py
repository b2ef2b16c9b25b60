"""A whole worker (every loop) in this process, until a condition holds: the tests of
timeouts, workflows and webhooks, on the store of their backend."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from jobq.registry import TaskRegistry
from jobq.settings import Settings
from jobq.store import SqlStore
from jobq.worker import Worker


def serve(store: SqlStore, settings: Settings, registry: TaskRegistry,
          done: Callable[[], bool], during: Callable[[Worker], Any] | None = None,
          limit: float = 30, concurrency: int = 4) -> Worker:
    """Run a worker until ``done()``, calling ``during(worker)`` (a function or a coroutine
    function) between looks; then stop it as SIGTERM would. Fails past ``limit`` seconds,
    or if the worker stops by itself."""
    async def main() -> Worker:
        worker = Worker(store, registry, settings, concurrency=concurrency)
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + limit
        try:
            while not done():
                assert time.monotonic() < deadline, "the jobs did not finish in time"
                assert not running.done(), "the worker stopped by itself"
                if during is not None:
                    step = during(worker)
                    if inspect.isawaitable(step):
                        await step
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
        return worker

    return asyncio.run(main())
