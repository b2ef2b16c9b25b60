"""The one shape of every background loop of a worker: run a body, sleep as long as it says
(a sleep that stopping interrupts), repeat until told to end.

A database that is down is weathered: the loop logs it and tries again with a growing pause,
because an outage is expected and every write is fenced, so retrying is safe. Any other error
ends the loop with that error; the worker sees its task finish and stops loudly with exit
code 1, because a loop that died of a bug would otherwise leave a worker that looks alive but,
say, no longer heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from jobq.errors import StoreUnavailable

log = logging.getLogger("jobq.worker")

#: A body: does one round of work, returns how many seconds to sleep before the next.
Body = Callable[[], Awaitable[float]]


def jittered(seconds: float, spread: float = 0.2) -> float:
    """Up to 20 % less than ``seconds``, so that many workers do not poll in lockstep, while a
    configured interval stays an upper bound (the recovery bound counts on the rescue
    interval)."""
    return seconds * (1 - random.uniform(0, spread))


async def sleep(seconds: float, until: asyncio.Event) -> None:
    """Sleep ``seconds``, or less when ``until`` is set meanwhile."""
    try:
        await asyncio.wait_for(until.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


def backoff(failures: int) -> float:
    """Pause after ``failures`` database errors in a row: 0.2 s, 0.4 s, ... at most 2 s.

    The cap is also how late a worker can be back at work after the database is (after a
    failover, a restart, a partition's heal): low enough to be a few seconds, high enough that
    a fleet of workers does not hammer a server that is coming up."""
    return min(0.1 * 2**failures, 2.0)


async def run_loop(name: str, body: Body, until: asyncio.Event) -> None:
    """Run ``body`` until ``until`` is set; ``body`` returns how long to sleep next.

    StoreUnavailable is logged and retried (see the module's docstring); anything else
    propagates and ends the loop.
    """
    failures = 0
    while not until.is_set():
        try:
            pause = await body()
            failures = 0
        except StoreUnavailable as exc:
            failures += 1
            pause = backoff(failures)
            log.warning("%s: database unavailable (try %d): %s", name, failures, exc)
        await sleep(jittered(pause), until)
