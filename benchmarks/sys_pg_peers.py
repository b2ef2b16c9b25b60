"""The PostgreSQL peers through their documented public APIs: PgQueuer (``Queries`` on an
asyncpg connection, ``pgq install``, ``pgq run``) and Procrastinate (``App`` with
``PsycopgConnector``, ``procrastinate schema --apply``, ``procrastinate worker``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import psycopg

from system import HERE, System, apaced, worker_env

_BIN = Path(__import__("sys").executable).parent


def _run(args: list[str], env: dict[str, str]) -> None:
    subprocess.run(args, env=env, cwd=HERE, check=True, timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class _PgPeer(System):
    def prepare(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sql = psycopg.connect(self.url, autocommit=True)
        self.mark()

    def close(self) -> None:
        self.sql.close()
        self.loop.close()

    def _scalar(self, query: str) -> int:
        return int(self.sql.execute(query).fetchone()[0] or 0)

    def _times(self, query: str) -> list[float]:
        return [float(r[0]) for r in self.sql.execute(query).fetchall()]

    def enqueue_single(self, n: int, first: int) -> float:
        async def go() -> float:
            began = time.perf_counter()
            for k in range(first, first + n):
                await self._one(k)
            return time.perf_counter() - began
        return self.loop.run_until_complete(go())

    def enqueue_batch(self, n: int, batch: int, first: int, sync: bool = False) -> float:
        async def go() -> float:
            began = time.perf_counter()
            for lo in range(first, first + n, batch):
                await self._many(range(lo, min(lo + batch, first + n)))
            return time.perf_counter() - began
        return self.loop.run_until_complete(go())

    def enqueue_paced(self, n: int, gap: float, first: int) -> list[float]:
        return self.loop.run_until_complete(apaced(n, gap, lambda k: self._one(first + k)))


class PgQueuer(_PgPeer):
    name = "pgqueuer"
    dist = "pgqueuer"
    settings = {
        "default": ("2 × PgQueuer.run() (default batch size, 10)", []),
        "tuned": ("2 × PgQueuer.run(batch_size=200)", ["--batch-size", "200"]),
    }

    def prepare(self) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        _run([str(_BIN / "pgq"), "install"], worker_env(self.stamp_dir, PGDSN=self.url))
        super().prepare()
        self.conn = self.loop.run_until_complete(asyncpg.connect(self.url))
        self.queries = Queries(AsyncpgDriver(self.conn))

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        super().close()

    async def _one(self, k: int) -> None:
        await self.queries.enqueue("cmp_noop", str(k).encode())

    async def _many(self, keys: range) -> None:
        await self.queries.enqueue(["cmp_noop"] * len(keys), [str(k).encode() for k in keys],
                                   [0] * len(keys))

    def workers(self, setting: str) -> list[tuple[str, list[str], dict[str, str]]]:
        env = worker_env(self.stamp_dir, PGDSN=self.url)
        args = [str(_BIN / "python"), str(HERE / "tasks_pgqueuer.py"),
                *self.settings[setting][1]]
        return [(f"pgq-worker-{i}", args, env) for i in range(2)]

    def mark(self) -> None:
        self.log_id = self._scalar("SELECT max(id) FROM pgqueuer_log")

    def backlog(self) -> int:
        return self._scalar("SELECT count(*) FROM pgqueuer")

    def done_times(self) -> list[float]:
        return self._times("SELECT extract(epoch FROM created) FROM pgqueuer_log WHERE "
                           f"status = 'successful' AND id > {self.log_id}")


class Procrastinate(_PgPeer):
    name = "procrastinate"
    dist = "procrastinate"
    settings = {
        "default": ("2 × `procrastinate worker` (default concurrency, 1)", []),
        "tuned": ("2 × `procrastinate worker --concurrency 64`", ["--concurrency", "64"]),
    }

    def _cli(self) -> list[str]:
        return [str(_BIN / "procrastinate"), "--app=tasks_procrastinate.app"]

    def prepare(self) -> None:
        _run([*self._cli(), "schema", "--apply"], worker_env(self.stamp_dir,
                                                             BENCH_PG_URL=self.url))
        os.environ["BENCH_PG_URL"] = self.url
        import importlib
        import sys

        sys.path.insert(0, str(HERE)) if str(HERE) not in sys.path else None
        import tasks_procrastinate

        self.mod = importlib.reload(tasks_procrastinate)
        super().prepare()
        self.loop.run_until_complete(self.mod.app.open_async())

    def close(self) -> None:
        self.loop.run_until_complete(self.mod.app.close_async())
        super().close()

    async def _one(self, k: int) -> None:
        await self.mod.cmp_noop.defer_async(k=k)

    async def _many(self, keys: range) -> None:
        await self.mod.cmp_noop.batch_defer_async(*[{"k": k} for k in keys])

    def workers(self, setting: str) -> list[tuple[str, list[str], dict[str, str]]]:
        env = worker_env(self.stamp_dir, BENCH_PG_URL=self.url)
        args = [*self._cli(), "--log-level", "warning", "worker", *self.settings[setting][1]]
        return [(f"procrastinate-worker-{i}", args, env) for i in range(2)]

    def mark(self) -> None:
        self.event_id = self._scalar("SELECT max(id) FROM procrastinate_events")

    def backlog(self) -> int:
        return self._scalar("SELECT count(*) FROM procrastinate_jobs "
                            "WHERE status IN ('todo', 'doing')")

    def done_times(self) -> list[float]:
        return self._times("SELECT extract(epoch FROM at) FROM procrastinate_events WHERE "
                           f"type = 'succeeded' AND id > {self.event_id}")
