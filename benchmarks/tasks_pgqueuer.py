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
