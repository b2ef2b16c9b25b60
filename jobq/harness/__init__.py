"""The helpers of the tools around jobq (``jobq bench``, ``jobq chaos`` and the tests): real
jobq processes and PgBouncer, started and stopped by their PID, and throw-away databases.

Nothing in the product imports this package, and it imports nothing of SQLAlchemy: PostgreSQL
URLs are edited with ``urllib.parse``. Everything talks to 127.0.0.1 only; every wait is
bounded; only processes started here are ever signalled, by their PID.
"""

from jobq.harness.databases import (
    PgDatabases,
    drop_sqlite,
    redact,
    server_address,
    with_database,
    with_server,
)
from jobq.harness.pgbouncer import PgBouncer, find_pgbouncer
from jobq.harness.pgcluster import PgCluster, missing_programs, pg_bin
from jobq.harness.procs import (
    Cluster,
    Proc,
    Processes,
    child_env,
    free_port,
    wait_for,
    wait_until,
)

__all__ = [
    "Cluster", "PgBouncer", "PgCluster", "PgDatabases", "pg_bin", "Proc", "Processes",
    "child_env", "drop_sqlite", "find_pgbouncer", "free_port", "missing_programs", "redact", "server_address",
    "wait_for", "wait_until", "with_database", "with_server",
]
