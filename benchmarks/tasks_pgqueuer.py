"""PgQueuer's no-op consumer, for ``pgq run tasks_pgqueuer:main`` (asyncpg, $PGDSN)."""

import os

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver

from stamps import stamp


async def main() -> PgQueuer:
    connection = await asyncpg.connect(os.environ["PGDSN"])
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("cmp_noop")
    async def cmp_noop(job) -> None:
        stamp(job.payload.decode())

    return pgq


if __name__ == "__main__":
    # `pgq run` of pgqueuer 1.6.0 dies in its logging set-up (a str where it expects a level
    # enum), so the worker starts through PgQueuer's Python entry point, with the same knob.
    import asyncio
    import sys

    async def _run() -> None:
        pgq = await main()
        size = int(sys.argv[sys.argv.index("--batch-size") + 1]) if "--batch-size" in sys.argv \
            else None
        await (pgq.run(batch_size=size) if size else pgq.run())

    asyncio.run(_run())
