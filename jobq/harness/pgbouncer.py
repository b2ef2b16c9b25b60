"""A real PgBouncer in front of a test PostgreSQL: its own ini, auth file and log in a temp
dir, on a free port of 127.0.0.1, started as our child and stopped by its PID.

Only for tests and tools; nothing of the product uses it, and no system PgBouncer service is
touched.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg

from jobq.harness.databases import server_address, with_database, with_server
from jobq.harness.procs import free_port, wait_until

POOL_MODES = ("session", "transaction")


def find_pgbouncer() -> str | None:
    """The pgbouncer binary, or None. Debian installs it in /usr/sbin, which is often not on
    a non-root user's PATH."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def _unprivileged_user() -> str | None:
    """PgBouncer refuses to run as root; as root it is started with ``-u`` as this user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PgBouncer as")


@dataclass
class PgBouncer:
    """PgBouncer in ``pool_mode`` before the server of ``server_url``. Use as a context
    manager, or ``start()`` and ``stop()``; ``url(database)`` reaches a database through it.

    ``pool_size`` is its ``default_pool_size``: the server connections per database and user.
    In transaction mode the default is small (4), so that the clients really share server
    connections; in session mode a client holds one for as long as it is connected, so the
    default there fits every client of a test cluster (an API and a few workers).
    """

    server_url: str
    pool_mode: str = "transaction"
    pool_size: int | None = None
    #: Seconds a client may stay idle inside a transaction before PgBouncer closes it.
    idle_transaction_timeout: int = 30
    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jobq-pgbouncer-")))
    popen: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, not {self.pool_mode!r}")
        if self.pool_size is None:
            self.pool_size = 4 if self.pool_mode == "transaction" else 40

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def url(self, database_url: str | None = None) -> str:
        """``database_url`` (by default the server URL) pointed at this PgBouncer."""
        return with_server(database_url or self.server_url, "127.0.0.1", self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _write_config(self) -> Path:
        host, port = server_address(self.server_url)
        user = unquote(urlsplit(self.server_url).username or "postgres")
        (self.dir / "userlist.txt").write_text(f'"{user}" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text("\n".join([
            "[databases]",
            # Every database name, on the server under test (auto-created pools).
            f"* = host={host or '127.0.0.1'} port={port or 5432}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir / 'userlist.txt'}",
            f"admin_users = {user}",
            f"pool_mode = {self.pool_mode}",
            f"default_pool_size = {self.pool_size}",
            "max_client_conn = 1000",
            f"idle_transaction_timeout = {self.idle_transaction_timeout}",
            # A client waiting for a server connection gets an error instead of hanging.
            "query_wait_timeout = 30",
            f"logfile = {self.log_path}",
            "",
        ]))
        return ini

    def start(self, timeout: float = 20) -> str:
        """Start it and wait until a query goes through it to the server; returns ``url()``."""
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (scripts/system-packages.sh)")
        ini = self._write_config()
        args = [binary]
        user = _unprivileged_user()
        if user is not None:
            args += ["-u", user]
            entry = pwd.getpwnam(user)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        args.append(str(ini))
        out = open(self.dir / "stdout.log", "ab")
        self.popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        out.close()
        if not wait_until(self._answers, timeout, 0.1):
            self.stop()
            raise RuntimeError(f"PgBouncer did not come up within {timeout}s:\n"
                               f"{self.log()[-2000:]}")
        return self.url()

    def _answers(self) -> bool:
        if self.popen is None or self.popen.poll() is not None:
            raise RuntimeError(f"PgBouncer exited:\n{self.log()[-2000:]}")
        try:
            with psycopg.connect(self.url(), connect_timeout=2, prepare_threshold=None) as c:
                c.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def show(self, what: str) -> list[dict[str, str]]:
        """``SHOW <what>`` of its admin console (CLIENTS, SERVERS, POOLS, …) as rows. The
        console speaks only the simple query protocol, hence libpq's exec_."""
        with psycopg.connect(self.url(with_database(self.server_url, "pgbouncer")),
                             autocommit=True, connect_timeout=5) as conn:
            res = conn.pgconn.exec_(f"SHOW {what}".encode())
            names = [res.fname(i).decode() for i in range(res.nfields)]
            return [{n: (res.get_value(r, i) or b"").decode() for i, n in enumerate(names)}
                    for r in range(res.ntuples)]

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 10) -> None:
        """SIGTERM (1.18: immediate shutdown), then SIGKILL; by its PID only."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)

    def remove(self) -> None:
        """Stop it and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
