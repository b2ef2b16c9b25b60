"""How a campaign runs: what it is given (Ctx), its fresh databases and processes (Setup),
and the common ending (drain, then the checks of checks.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobq.chaos.checks import (
    Check,
    ConnectionWatch,
    common_checks,
    drain,
    open_checker_store,
    read_ledger,
)
from jobq.chaos.cluster import Databases, chaos_cluster
from jobq.chaos.load import LoadGen
from jobq.harness import Cluster, Proc
from jobq.settings import load_settings
from jobq.store import SqlStore, open_store


@dataclass
class Ctx:
    """What every campaign gets: where PostgreSQL is, where to write logs, how big to go."""

    admin_url: str
    out_dir: Path
    reduced: bool
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def scale(self, full: int, reduced: int) -> int:
        return reduced if self.reduced else full


# -- running one campaign --------------------------------------------------------------------


Campaign = Callable[[Ctx], list[Check]]


@dataclass
class Setup:
    ctx: Ctx
    name: str
    sqlite: bool = False
    dbs: Databases = field(init=False)
    cluster: Cluster = field(init=False)
    db_url: str = field(init=False)

    def __enter__(self) -> Setup:
        self.dbs = Databases(self.ctx.admin_url)
        self.dbs.create()
        run_dir = self.ctx.out_dir / self.name
        run_dir.mkdir(parents=True, exist_ok=True)
        self.db_url = (f"sqlite:///{run_dir / 'jobq.db'}" if self.sqlite else self.dbs.jobq_url)
        store = open_store(load_settings(database_url=self.db_url))  # migrate once, up front
        store.dispose()
        self.cluster = chaos_cluster(run_dir, self.db_url, self.dbs.ledger_url)
        return self

    def store(self) -> SqlStore:
        return open_checker_store(self.db_url)

    def __exit__(self, *exc: object) -> None:
        try:
            self.cluster.stop()
        finally:
            self.dbs.drop()


def work(ms: int) -> Callable[[int], dict[str, Any]]:
    return lambda i: {"task_type": "chaos.work", "payload": {"ms": ms}}


def start_workers(cluster: Cluster, n: int, concurrency: int = 8, **env: str) -> list[Proc]:
    return [cluster.start_worker(i, "--concurrency", str(concurrency), **env) for i in range(n)]


def finish(s: Setup, load: LoadGen | None, drain_s: float = 120, watch: ConnectionWatch | None
           = None, **kw: Any) -> list[Check]:
    if load is not None:
        load.join(300)
    store = s.store()
    try:
        drained = drain(store, drain_s)
        checks = common_checks(store, read_ledger(s.dbs.ledger_url), load, drained, **kw)
    finally:
        store.dispose()
    if watch is not None:
        checks += watch.stop()
    return checks


def pool_bound(processes: int) -> int:
    # Each process: pool 10 + overflow 10 (defaults), plus the checker's 2 and ledger slack.
    return processes * 20 + 4
