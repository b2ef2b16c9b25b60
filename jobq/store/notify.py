"""PostgreSQL LISTEN: wake-ups for idle workers.

The store sends one notification per committed batch and queue (``SqlStore._notify``); a
worker listens here on its own connection, outside the pool. Notifications are only a hint:
one that is lost (the connection dropped, a pooler in transaction mode swallowed LISTEN) costs
at most one poll interval, because workers keep polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

import psycopg
from sqlalchemy import Engine

from jobq.store.sql import NOTIFY_CHANNEL

log = logging.getLogger("jobq.store")


def listen_dsn(engine: Engine) -> str | None:
    """The libpq connection string of a PostgreSQL engine; None for other databases."""
    if engine.dialect.name != "postgresql":
        return None
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(
    dsn: str,
    queues: Collection[str],
    wake: Callable[[], None],
) -> None:
    """Call ``wake`` for every notification about one of ``queues``, and once after each
    (re)connection, which catches up on anything sent while the connection was down.

    Runs until cancelled; reconnects with a growing pause when the connection fails.
    """
    failures = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=10, application_name="jobq-listen",
                # A peer that vanished without a word (a partition) is noticed within about a
                # minute, and the connection is made again; polling covers the gap.
                keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
            ) as conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                failures = 0
                wake()
                async for note in conn.notifies():
                    if note.payload in queues:
                        wake()
        except (psycopg.Error, OSError) as exc:
            failures += 1
            pause = min(0.2 * 2**failures, 10.0)
            log.warning("LISTEN connection failed (try %d, again in %.1fs); polling meanwhile: "
                        "%s", failures, pause, exc)
            await asyncio.sleep(pause)
