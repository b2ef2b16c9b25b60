"""Where a handler's start time goes: one line "<key> <time.time()>" per job, appended with one
unbuffered write to a file of its own process (``$BENCH_STAMP_DIR/start-<pid>.txt``), so that a
worker stopped by SIGTERM loses nothing. The same code runs in every system's handler."""

from __future__ import annotations

import os
import time
from pathlib import Path

_fds: dict[str, int] = {}


def _fd(kind: str) -> int:
    fd = _fds.get(kind)
    if fd is None:
        path = Path(os.environ["BENCH_STAMP_DIR"]) / f"{kind}-{os.getpid()}.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fds[kind] = fd
    return fd


def stamp(key: object, kind: str = "start") -> None:
    """Record now (Unix seconds) for ``key``."""
    os.write(_fd(kind), f"{key} {time.time():.6f}\n".encode())


def read(stamp_dir: Path, kind: str = "start") -> dict[str, float]:
    """Every recorded time of ``kind`` by key (the first one, if a key ran twice)."""
    out: dict[str, float] = {}
    for path in sorted(stamp_dir.glob(f"{kind}-*.txt")):
        for line in path.read_text().splitlines():
            key, _, t = line.rpartition(" ")
            if key and key not in out:
                out[key] = float(t)
    return out


def clear(stamp_dir: Path) -> None:
    for path in stamp_dir.glob("*-*.txt"):
        path.unlink()
