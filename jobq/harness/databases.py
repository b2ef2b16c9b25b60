"""Throw-away databases, and the PostgreSQL URLs that reach them (edited with ``urllib.parse``,
so that the tools need no SQLAlchemy)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg


def _scheme(scheme: str) -> str:
    # psycopg and jobq's settings take postgresql://; SQLAlchemy's driver suffix is dropped.
    return "postgresql" if scheme == "postgresql+psycopg" else scheme


def with_database(url: str, database: str) -> str:
    """``url`` with another database name: the same server, user and query."""
    p = urlsplit(url)
    return urlunsplit((_scheme(p.scheme), p.netloc, f"/{database}", p.query, p.fragment))


def with_server(url: str, host: str, port: int) -> str:
    """``url`` pointed at another host and port (the same user, password and database)."""
    p = urlsplit(url)
    userinfo, at, _ = p.netloc.rpartition("@")
    return urlunsplit((_scheme(p.scheme), f"{userinfo}{at}{host}:{port}", p.path, p.query,
                       p.fragment))


def server_address(url: str) -> tuple[str | None, int | None]:
    """The host and port a URL names (None where it names none)."""
    p = urlsplit(url)
    return p.hostname, p.port


def redact(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``."""
    p = urlsplit(url)
    if p.password is None:
        return url
    userinfo, _, hostport = p.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit((p.scheme, f"{user}:***@{hostport}", p.path, p.query, p.fragment))


def drop_sqlite(url: str) -> None:
    """Remove a SQLite database file and its WAL and shared-memory files."""
    path = Path(url.removeprefix("sqlite:///"))
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


@dataclass
class PgDatabases:
    """Throw-away PostgreSQL databases on the server of ``admin_url``: ``name``, and
    ``name + suffix`` for each of ``extra``; created together, dropped together."""

    admin_url: str
    name: str = field(default_factory=lambda: f"jobq_tmp_{uuid.uuid4().hex[:10]}")
    extra: tuple[str, ...] = ()

    def url(self, suffix: str = "") -> str:
        return with_database(self.admin_url, self.name + suffix)

    @property
    def names(self) -> list[str]:
        return [self.name + suffix for suffix in ("", *self.extra)]

    def create(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            for name in self.names:
                admin.execute(f'CREATE DATABASE "{name}"')

    def drop(self) -> None:
        """Drop them, closing whatever is still connected; retried a few times, since a chaos
        campaign may have left the server restarting."""
        for _ in range(3):
            try:
                with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as a:
                    for name in self.names:
                        a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.Error:
                time.sleep(2)
