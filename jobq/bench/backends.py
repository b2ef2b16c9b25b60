"""The throw-away databases of one kind (SQLite files in the work directory, or PostgreSQL
databases created on --pg-url), and their removal at the end."""

from __future__ import annotations

import uuid
from pathlib import Path

from jobq.bench.options import PhaseError
from jobq.harness import PgDatabases, drop_sqlite


class Backend:
    """Makes throw-away databases of one kind and drops them at the end."""

    def __init__(self, kind: str, pg_url: str, work_dir: Path) -> None:
        self.kind = kind
        self.pg_url = pg_url
        self.work_dir = work_dir
        self._pg: list[PgDatabases] = []
        self._files: list[str] = []

    def check(self) -> None:
        if self.kind == "postgresql":
            import psycopg

            try:
                with psycopg.connect(self.pg_url, connect_timeout=5):
                    pass
            except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
                raise PhaseError(f"PostgreSQL at {self.pg_url} is unreachable: {exc}") from None

    def new_url(self, label: str) -> str:
        if self.kind == "sqlite":
            path = self.work_dir / f"{label}-{uuid.uuid4().hex[:6]}.db"
            self._files.append(f"sqlite:///{path}")
            return self._files[-1]
        db = PgDatabases(self.pg_url, name=f"jobq_bench_{uuid.uuid4().hex[:10]}")
        self._pg.append(db)
        db.create()
        return db.url()

    def drop(self, url: str) -> None:
        if self.kind == "sqlite":
            drop_sqlite(url)
            return
        for db in [d for d in self._pg if d.url() == url]:
            db.drop()
            self._pg.remove(db)

    def drop_all(self) -> None:
        for url in self._files:
            self.drop(url)
        self._files.clear()
        for db in list(self._pg):
            db.drop()
        self._pg.clear()
