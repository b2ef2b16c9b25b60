"""Where the CPU goes: utime+stime from /proc of the worker processes (with their children,
live and reaped) and of the PostgreSQL backends serving one database, and that database's own
counters (pg_stat_database). pg_stat_statements is used by nobody here: it is not loaded on
the benchmark's server, and the server's configuration is not ours to change."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu(pid: int, with_reaped: bool = True) -> float:
    """CPU seconds of ``pid`` (utime+stime, plus cutime+cstime of reaped children)."""
    f = _stat(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if with_reaped else 0)
    return ticks / _TICK


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = _stat(int(d.name))
            if f is not None:
                kids.setdefault(int(f[1]), []).append(int(d.name))
    return kids


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of ``pids`` and all their live descendants (and what those reaped)."""
    kids = _children()
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += proc_cpu(pid)
        todo.extend(kids.get(pid, []))
    return total


class PgCpu:
    """The CPU of the backends connected to ``database``, summed over every backend seen at a
    snapshot (a backend's last reading is kept after it exits: a lower bound then)."""

    def __init__(self, admin_url: str, database: str) -> None:
        self.admin_url, self.database = admin_url, database
        self.last: dict[int, float] = {}
        self.base: dict[int, float] = {}

    def _pids(self) -> list[int]:
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            rows = c.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                             (self.database,)).fetchall()
        return [r[0] for r in rows]

    def snapshot(self) -> float:
        for pid in self._pids():
            self.last[pid] = proc_cpu(pid, with_reaped=False)
        return sum(self.last.values())

    def start(self) -> None:
        self.snapshot()
        self.base = dict(self.last)

    def used(self) -> float:
        self.snapshot()
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.last.items())


def db_counters(admin_url: str, database: str) -> dict[str, int]:
    """pg_stat_database's transactions and written tuples of ``database`` (fresh snapshot)."""
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        row = c.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted,"
            " tup_returned, tup_fetched FROM pg_stat_database WHERE datname = %s",
            (database,)).fetchone()
    keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
            "tup_returned", "tup_fetched")
    return dict(zip(keys, row or (0,) * len(keys)))


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}
