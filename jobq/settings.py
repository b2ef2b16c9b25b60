"""The one settings object of jobq.

Read from ``JOBQ_*`` environment variables (and CLI options that override them), validated once
at start and passed in. Nothing in jobq reads the environment at import time.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobq.errors import ConfigError
from jobq.types import NAME_PATTERN

__all__ = ["NAME_PATTERN", "Settings", "load_settings"]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of jobq. Environment: ``JOBQ_<FIELD>``, e.g. ``JOBQ_DATABASE_URL``."""

    model_config = SettingsConfigDict(env_prefix="JOBQ_", extra="ignore", frozen=True)

    database_url: str = Field(
        "sqlite:///jobq.db",
        description="sqlite:///path.db or postgresql://user@host:port/db",
    )
    tasks: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated modules that define task handlers."
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default"], description="Queues a worker serves."
    )
    max_attempts: int = Field(3, ge=1, le=1000, description="Default attempts per job.")
    lease_seconds: float = Field(30.0, gt=0, le=86400, description="Lease length of a claim.")
    heartbeat_interval_seconds: float | None = Field(
        None, gt=0, description="How often leases are renewed (default: lease/3)."
    )
    heartbeat_enabled: bool = Field(
        True, description="Renew leases while jobs run. Off only for fault tests (the negative "
        "control of `jobq chaos`): a long job is then rescued while it still runs."
    )
    rescue_interval_seconds: float = Field(
        5.0, gt=0, le=3600, description="How often a worker rescues expired leases."
    )
    poll_interval_seconds: float = Field(
        1.0, gt=0, le=3600, description="Idle poll interval of a worker."
    )
    listen_enabled: bool = Field(
        True, description="Wake idle workers as soon as jobs arrive: LISTEN/NOTIFY on "
        "PostgreSQL, a watch of the file's commit counter on SQLite (polling stays as the "
        "fallback). Behind a pooler in transaction mode it needs JOBQ_LISTEN_URL."
    )
    db_pooler: Literal["none", "session", "transaction"] = Field(
        "none", description="What sits between jobq and PostgreSQL: `none` (a direct "
        "connection), `session` (a pooler such as PgBouncer in session mode: nothing changes) "
        "or `transaction` (a pooler in transaction mode: psycopg prepares no statements, "
        "which such a pooler cannot route, and workers LISTEN only through JOBQ_LISTEN_URL)."
    )
    listen_url: str | None = Field(
        None, description="A PostgreSQL URL used only for the workers' LISTEN connection (one "
        "per worker process): a direct connection or a pooler in session mode, for when "
        "JOBQ_DATABASE_URL goes through a pooler in transaction mode. Unset: LISTEN goes "
        "where JOBQ_DATABASE_URL goes, or, with JOBQ_DB_POOLER=transaction, nowhere (idle "
        "workers then find jobs by polling, every JOBQ_POLL_INTERVAL_SECONDS)."
    )
    scheduler_enabled: bool = Field(
        True, description="Enqueue the periodic jobs that the task modules declare "
        "(jobq.schedule, @task(schedule=...)); every worker may, and each tick is enqueued "
        "once however many do."
    )
    retention_seconds: float = Field(
        7 * 86400, ge=0, description="Done and cancelled jobs older than this are deleted "
        "with their attempts; 0 keeps them forever."
    )
    failed_retention_seconds: float = Field(
        30 * 86400, ge=0, description="Failed jobs (the dead letters, kept to be inspected "
        "and retried) are deleted after this instead; 0 keeps them forever."
    )
    prune_interval_seconds: float = Field(
        60.0, gt=0, le=86400, description="How often a worker prunes finished jobs (one worker "
        "at a time)."
    )
    backoff_base_seconds: float = Field(1.0, ge=0, le=86400, description="Backoff of attempt 1.")
    backoff_cap_seconds: float = Field(300.0, ge=0, le=30 * 86400, description="Backoff ceiling.")
    concurrency: int = Field(
        100, ge=1, le=1000, description="Jobs run at once per process (claims never take "
        "more than the free slots)."
    )
    processes: int = Field(1, ge=1, le=64, description="Worker processes per `jobq worker`.")
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="A worker serves its Prometheus metrics at "
        "http://JOBQ_METRICS_HOST:port/metrics (with several worker processes, process i on "
        "port + i); unset: none.")
    metrics_host: str = Field("127.0.0.1", description="Address the workers' metrics bind.")
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, le=3600, description="Time running jobs get to finish on SIGTERM."
    )
    timeout_seconds: float = Field(
        1800.0, ge=0, le=7 * 86400, description="How long one attempt of a job may run "
        "unless its task or the job says otherwise; past it the attempt ends with outcome "
        "timeout and is retried or failed like an error. 0: no default timeout."
    )
    max_abandoned_threads: int = Field(
        10, ge=0, le=1000, description="A def handler stopped by a timeout or a cancel "
        "cannot be killed: its thread is abandoned. With this many still running, the worker "
        "stops gracefully and starts again as a fresh process. 0: never."
    )
    auto_migrate: bool = Field(True, description="Apply pending migrations at start.")
    db_pool_size: int = Field(10, ge=1, le=200, description="Connections kept per process.")
    db_max_overflow: int = Field(10, ge=0, le=200, description="Extra connections under load.")
    db_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="Pool wait, connect timeout and SQLite busy timeout."
    )
    db_network_timeout_seconds: float = Field(
        10.0, ge=1, le=600,
        description="PostgreSQL: how long a connection may leave data unacknowledged or go "
        "silent before it counts as dead (TCP user timeout and keepalives). A call cut off "
        "by a partition fails within about this time instead of hanging for the kernel's "
        "two hours.",
    )
    db_statement_timeout_seconds: float = Field(
        30.0, ge=0, le=86400,
        description="PostgreSQL: longest a statement of jobq may run, lock waits included "
        "(statement_timeout of its sessions; 0: no limit). Migrations lift it.",
    )
    db_idle_in_transaction_seconds: float = Field(
        10.0, ge=0, le=86400,
        description="PostgreSQL: how long a session of jobq may sit idle inside a "
        "transaction before the server aborts it (idle_in_transaction_session_timeout; 0: "
        "never). A client cut off or frozen mid-transaction holds its rows no longer; keep "
        "it below JOBQ_LEASE_SECONDS, or rescue of that client's jobs waits for it.",
    )
    api_processes: int = Field(
        1, ge=1, le=64, description="API server processes behind the one port of `jobq api` "
        "(uvicorn workers); each has its own connection pool, group commit and rate limits.",
    )
    host: str = Field("127.0.0.1", description="Address the API binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API binds.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    allow_open_api: bool = Field(
        False,
        description="Serve the API on a non-loopback address while no API key exists "
        "(every request is then allowed).",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated names the API answers to in the Host header, besides "
        "localhost and IP addresses (`*.example.com` for subdomains, `*` for any).",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated web origins (`https://app.example.com`) allowed to send "
        "state-changing requests, besides the API's own.",
    )
    api_key_cache_seconds: float = Field(
        2.0, ge=0, le=60,
        description="How long an API process trusts what it read about API keys; a revoked "
        "or new key takes effect within this time.",
    )
    rate_limit_per_second: float = Field(
        100.0, ge=0, le=1_000_000,
        description="Requests per second per API key and API process (0: no limit).",
    )
    rate_limit_burst: int = Field(
        200, ge=1, le=10_000_000, description="Requests an API key may make at once."
    )
    api_max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024 * 1024,
        description="Largest request line plus headers the API reads; past it, 431.",
    )
    api_header_timeout_seconds: float = Field(
        10.0, gt=0, le=3600,
        description="Time a connection has to send a request's line and headers, from its "
        "opening (or from the request's first byte); past it, 408 and the connection closes.",
    )
    api_body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600,
        description="Time a request's body has to arrive after its headers; past it, 408 "
        "and the connection closes.",
    )
    api_max_connections: int = Field(
        1000, ge=1, le=1_000_000,
        description="Open connections per API process; past it, 503 at once. Lowered to "
        "fit the limit on open files (ulimit -n), which is raised where it can be.",
    )
    auth_failures_per_second: float = Field(
        1.0, ge=0, le=1_000_000,
        description="Failed authentications (401) a client address may make per second and "
        "API process, after its burst (0: no limit); past it, 429 before any lookup.",
    )
    auth_failure_burst: int = Field(
        20, ge=1, le=1_000_000, description="Failed authentications a client address may "
        "make at once.",
    )
    batch_max_jobs: int = Field(
        1000, ge=1, le=100_000, description="Most jobs one `POST /jobs/batch` may submit."
    )
    max_waiters: int = Field(
        1000, ge=1, le=1_000_000, description="Most waits (`GET /jobs/{id}?wait=`, "
        "`JobService.wait`) one process holds at once; past it a wait is refused (429).",
    )
    wait_recheck_seconds: float = Field(
        5.0, gt=0, le=60, description="A waiting job is read again this often even without "
        "a notification (one may be missed while the listener reconnects).",
    )
    webhook_secret: str | None = Field(
        None, min_length=16, description="The secret that signs completion webhooks "
        "(HMAC-SHA256; at least 16 characters, e.g. `openssl rand -hex 32`); the same on "
        "every API and worker process. Unset: a callback_url is refused at enqueue.",
    )
    webhook_allow_private: bool = Field(
        False, description="Let webhooks go to private, loopback, link-local and other "
        "non-public addresses (refused by default, at enqueue and at delivery).",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="How long one delivery attempt of a webhook may "
        "take (resolving, connecting, sending, the answer); past it, it is retried.",
    )
    webhook_max_attempts: int = Field(
        20, ge=1, le=1000, description="Attempts of a webhook delivery before it fails.",
    )
    webhook_backoff_base_seconds: float = Field(
        2.0, ge=0, le=86400, description="Backoff after a webhook's first failed attempt.",
    )
    webhook_backoff_cap_seconds: float = Field(
        300.0, ge=0, le=30 * 86400, description="Backoff ceiling of webhook deliveries.",
    )

    @field_validator("tasks", "queues", "allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, value: list[str]) -> list[str]:
        import re

        if not value:
            raise ValueError("at least one queue is needed")
        for name in value:
            if not re.fullmatch(NAME_PATTERN, name):  # re.match lets "name\n" through
                raise ValueError(f"{name!r} is not a valid queue name")
        return value

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "sqlite+pysqlite:", "postgresql:", "postgres:",
                                 "postgresql+psycopg:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @field_validator("db_pooler", mode="before")
    @classmethod
    def _pooler(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("listen_url", mode="before")
    @classmethod
    def _listen_url(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip() or None  # JOBQ_LISTEN_URL= (empty) means unset
        if isinstance(value, str) and not value.startswith(
                ("postgresql:", "postgres:", "postgresql+psycopg:")):
            raise ValueError("must start with postgresql://")
        return value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _secret(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None  # JOBQ_WEBHOOK_SECRET= (empty) means unset
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be debug, info, warning or error")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            # Named by their variables: load_settings can only name field-level errors itself.
            raise ValueError("JOBQ_BACKOFF_CAP_SECONDS must be >= JOBQ_BACKOFF_BASE_SECONDS")
        if self.webhook_backoff_cap_seconds < self.webhook_backoff_base_seconds:
            raise ValueError("JOBQ_WEBHOOK_BACKOFF_CAP_SECONDS must be >= "
                             "JOBQ_WEBHOOK_BACKOFF_BASE_SECONDS")
        if self.heartbeat_interval_seconds is not None and (
            2 * self.heartbeat_interval_seconds + min(1.0, self.lease_seconds / 10)
            >= self.lease_seconds
        ):
            # A beat may wait up to one interval for an outcome write in flight, so two
            # intervals must fit in a lease before the worker's self-fencing margin.
            raise ValueError(
                "JOBQ_HEARTBEAT_INTERVAL_SECONDS must be under half of JOBQ_LEASE_SECONDS "
                "(less a tenth of the lease, at most 1 s)"
            )
        if self.is_sqlite and (self.db_pooler != "none" or self.listen_url is not None):
            # Named by their variables, as above: a pooler is PostgreSQL's.
            raise ValueError("JOBQ_DB_POOLER and JOBQ_LISTEN_URL are for PostgreSQL; "
                             "JOBQ_DATABASE_URL is a SQLite database")
        return self

    @property
    def heartbeat_seconds(self) -> float:
        """Heartbeats come three times per lease unless set explicitly."""
        return self.heartbeat_interval_seconds or self.lease_seconds / 3

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with the driver jobq uses (psycopg 3 for PostgreSQL).

        libpq's multi-host form, ``postgresql://user@h1:5432,h2:5433/db?target_session_attrs=
        read-write`` (a primary and its standbys; libpq tries them in order and keeps the
        first that fits), is one that SQLAlchemy cannot parse: its hosts move to the query,
        ``postgresql+psycopg://user@/db?...&host=h1,h2&port=5432,5433``, which SQLAlchemy's
        psycopg dialect hands to libpq as the same two lists."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + self._hosts_to_query(url[len(prefix):])
        return url

    @staticmethod
    def _hosts_to_query(rest: str) -> str:
        """``user@h1:p1,h2:p2/db?query`` (what follows ``scheme://``) as ``user@/db?query&host=
        h1,h2&port=p1,p2``; unchanged when it names one host or none. ValueError when it
        cannot be done (a port that is no number; hosts given in both places)."""
        from urllib.parse import parse_qsl

        end = min((i for i in (rest.find(c) for c in "/?") if i >= 0), default=len(rest))
        authority, tail = rest[:end], rest[end:]
        userinfo, at, hostlist = authority.rpartition("@")
        if "," not in hostlist:
            return rest
        hosts, ports = [], []
        for entry in hostlist.split(","):
            if entry.startswith("["):  # [IPv6] or [IPv6]:port
                host, _, port = entry[1:].partition("]")
                if port and not port.startswith(":"):
                    raise ValueError(f"{entry!r} is not a host of a multi-host URL")
                port = port[1:]
            else:
                host, _, port = entry.partition(":")
            if not host:
                raise ValueError("a multi-host URL has an empty host")
            if port and not port.isdigit():
                raise ValueError(f"{entry!r}: the port must be a number")
            hosts.append(host)
            ports.append(port)
        path, _, query = tail.partition("?")
        given = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
        if given & {"host", "hostaddr", "port"}:
            raise ValueError("a multi-host URL names its hosts before the database, not in "
                             "host=, hostaddr= or port=")
        moved = [f"host={','.join(hosts)}"] + ([f"port={','.join(ports)}"] if any(ports) else [])
        return f"{userinfo}{at}{path or '/'}?{'&'.join(([query] if query else []) + moved)}"

    @field_validator("database_url")
    @classmethod
    def _multi_host(cls, value: str) -> str:
        for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://"):
            if value.startswith(prefix):
                cls._hosts_to_query(value[len(prefix):])  # its ValueError names the fault
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment plus explicit overrides (None means "not given").

    Raises ConfigError with a message that names each bad setting by its environment variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            name = f"JOBQ_{field.upper()}" if field != "settings" else "settings"
            lines.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None
