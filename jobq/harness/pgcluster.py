"""A throw-away PostgreSQL cluster of its own (initdb in a temporary directory, its own port
and addresses), for the tests that must stop, kill or re-address a server: the machine's own
PostgreSQL is never stopped or reconfigured.

The server runs as the ``postgres`` system user when started by root (PostgreSQL refuses to
run as root), and is ended by the PID in its postmaster.pid.

A pair for failover: ``PgCluster.primary()`` is made ready to stream its WAL, and
``primary.standby()`` is its synchronous streaming standby (``pg_basebackup -R``): a commit
the primary answers is on the standby too. ``standby.promote()`` makes it a primary.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from jobq.harness.procs import free_port, wait_until


def pg_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl, …): on PATH, or Debian's versioned dir."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for d in versions:
        if (d / name).exists():
            return str(d / name)
    raise FileNotFoundError(f"{name}: no PostgreSQL server programs found (PATH or "
                            "/usr/lib/postgresql/*/bin)")


def missing_programs(names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` (initdb, pg_ctl, …) that ``pg_bin`` cannot find."""
    missing = []
    for name in names:
        try:
            pg_bin(name)
        except FileNotFoundError:
            missing.append(name)
    return missing


def _as_owner() -> tuple[dict[str, object], int | None, int | None]:
    """How to run a server program: as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return {}, None, None
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid}, pw.pw_uid, pw.pw_gid


def _reachable_dir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="jobq-pg-"))
    base.chmod(0o755)
    _, uid, gid = _as_owner()
    if uid is not None:
        os.chown(base, uid, gid or -1)  # the server writes its log here
    return base


@dataclass
class PgCluster:
    """One server: ``data`` holds its files; it listens on 127.0.0.1 and ``addresses``.

    By default ``data`` is a new directory under the system's temporary one, which the
    ``postgres`` user can reach (a test's own tmp_path is private to root)."""

    data: Path = field(default_factory=lambda: _reachable_dir() / "data")
    port: int = field(default_factory=free_port)
    addresses: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)

    #: The name the standby gives itself (``cluster_name``, which its WAL receiver sends as
    #: application_name), and that the primary waits for (``synchronous_standby_names``).
    STANDBY_NAME = "jobq_standby"

    @classmethod
    def primary(cls, **kw: object) -> PgCluster:
        """A server ready to have a synchronous standby: every commit waits until the standby
        has it on disk (``synchronous_commit = on``), so none that was answered is lost when
        the standby takes over. Until a standby is connected, commits wait."""
        settings = {
            "wal_level": "replica",
            "max_wal_senders": "5",
            "wal_keep_size": "'256MB'",
            "synchronous_standby_names": f"'{cls.STANDBY_NAME}'",
            "synchronous_commit": "on",
            **kw.pop("settings", {}),  # type: ignore[dict-item]
        }
        return cls(settings=settings, **kw)  # type: ignore[arg-type]

    def standby(self, timeout: float = 120) -> PgCluster:
        """A streaming standby of this (running) server, in a directory of its own: a base
        backup with ``-R`` (standby.signal and primary_conninfo), not yet started. It is no
        one's synchronous standby itself, so once promoted it commits alone."""
        run_as, _, _ = _as_owner()
        other = PgCluster(settings={"cluster_name": f"'{self.STANDBY_NAME}'",
                                    "hot_standby": "on"})
        try:
            subprocess.run([pg_bin("pg_basebackup"), "-D", str(other.data), "-h", "127.0.0.1",
                            "-p", str(self.port), "-U", "postgres", "-R", "-X", "stream",
                            "-c", "fast", "--no-sync"],
                           check=True, capture_output=True, timeout=timeout,
                           **run_as)  # type: ignore[arg-type]
        except BaseException:
            other.remove()
            raise
        return other

    def in_recovery(self) -> bool | None:
        """Whether it is a standby (None: it does not answer)."""
        try:
            with psycopg.connect(self.url(), connect_timeout=2) as c:
                return bool(c.execute("SELECT pg_is_in_recovery()").fetchone()[0])
        except psycopg.Error:
            return None

    def sync_standbys(self) -> list[str]:
        """The application names of the standbys this server now waits for at commit."""
        try:
            with psycopg.connect(self.url(), connect_timeout=2) as c:
                rows = c.execute("SELECT application_name FROM pg_stat_replication "
                                 "WHERE sync_state = 'sync' AND state = 'streaming'").fetchall()
                return [r[0] for r in rows]
        except psycopg.Error:
            return []

    def promote(self, timeout: float = 60) -> None:
        """Make this standby a primary (``pg_ctl promote``) and wait until it takes writes."""
        run_as, _, _ = _as_owner()
        subprocess.run([pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", str(int(timeout)),
                        "promote"], check=True, capture_output=True, timeout=timeout + 10,
                       **run_as)  # type: ignore[arg-type]
        if not wait_until(lambda: self.in_recovery() is False, timeout, 0.05):
            raise RuntimeError(f"the standby in {self.data} was not promoted; see {self.log}")

    def init(self) -> PgCluster:
        run_as, uid, gid = _as_owner()
        self.data.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(self.data, uid, gid or -1)
        subprocess.run([pg_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120, **run_as)  # type: ignore[arg-type]
        # Clients in the test's own namespaces reach it by their addresses (trust: a test
        # server, bound to 127.0.0.1 and the test's veth addresses only).
        with open(self.data / "pg_hba.conf", "a") as f:
            f.write("host all all 0.0.0.0/0 trust\nhost replication all 0.0.0.0/0 trust\n")
        return self

    def conf(self) -> dict[str, str]:
        return {
            "listen_addresses": "'" + ",".join(("127.0.0.1", *self.addresses)) + "'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.data}'",
            "max_connections": "200",
            "fsync": "on",
            "logging_collector": "off",
            **self.settings,
        }

    def start(self, timeout: float = 60) -> PgCluster:
        run_as, _, _ = _as_owner()
        opts = " ".join(f"-c {k}={v}" for k, v in self.conf().items())
        subprocess.run([pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                        "-t", str(int(timeout)), "-o", opts, "start"],
                       check=True, capture_output=True, timeout=timeout + 10,
                       **run_as)  # type: ignore[arg-type]
        if not wait_until(self.accepts, timeout, 0.2):
            raise RuntimeError(f"the cluster in {self.data} did not come up; see {self.log}")
        return self

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.data.name}.log"

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{database}"

    def accepts(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, hard: bool = False, timeout: float = 30) -> None:
        """End the server: a fast shutdown, or (``hard``) an immediate one, SIGQUIT: every
        backend exits at once without a checkpoint, and the next start recovers from the WAL,
        as after a crash."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGQUIT if hard else signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
        self.log.unlink(missing_ok=True)
        if self.data.parent.name.startswith("jobq-pg-"):
            shutil.rmtree(self.data.parent, ignore_errors=True)
