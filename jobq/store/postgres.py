"""PostgreSQL: SKIP LOCKED claims in one autocommit statement, batches as arrays or JSON,
wake-ups by NOTIFY (and the LISTEN side), advisory locks.

Everything here is what ``dialect.Dialect`` asks for; the statements that are the same on
both databases live in the concern modules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Float,
    Integer,
    Select,
    Table,
    Text,
    any_,
    bindparam,
    case,
    cast,
    column,
    create_engine,
    event,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg

from jobq.settings import Settings
from jobq.store.base import pool_options
from jobq.store.dialect import ClaimRunner, CompletionRunner, Connections, StatementRunner
from jobq.store.direct import Direct
from jobq.store.exprs import DONE_LEASE, MIGRATION_LOCK, db_now, held, seconds_from_now
from jobq.store.tables import KEYED, jobs
from jobq.types import JobState, Lease

log = logging.getLogger("jobq.store")

PENDING, RUNNING, DONE = JobState.PENDING.value, JobState.RUNNING.value, JobState.DONE.value

#: Channel on which idle workers are woken; the payload is the queue's name.
NOTIFY_CHANNEL = "jobq_jobs"

#: Channel on which the waiters of jobs are told that jobs became final (done, failed,
#: cancelled); the payload is their ids, comma-separated, or "" for "look again, all of you"
#: when they would not fit in a notification (8,000 bytes). Only API and service processes
#: that wait for jobs LISTEN to it (``jobq.waits``); workers never hear it.
FINAL_CHANNEL = "jobq_final"
#: Ids per notification: 390 ids of up to 19 digits and a comma fit in 7,800 bytes.
FINAL_IDS_PER_NOTE = 390


def _final_payload(ids: Any) -> Any:
    """The FINAL_CHANNEL payload for a column of job ids (an aggregate): the ids, or "" when
    there are too many for one notification."""
    return case((func.count() <= FINAL_IDS_PER_NOTE,
                 func.string_agg(cast(ids, Text), literal(","))), else_=literal(""))


#: running → done for a batch: the batch arrives as one JSON array of rows (a single
#: parameter, which Python's C encoder writes; four arrays of 200 elements cost psycopg's
#: array dumper a third of a completion's client time), so the text of the statement is the
#: same for every batch. Each row holds 'running' (``exprs.held``'s ``running``). RETURNING
#: gives the tokens whose guard held. The successful attempt is the done row itself
#: (``attempt_log``): nothing else is written.
_FINISHED = (
    select(
        func.jsonb_to_recordset(cast(bindparam("c_done", type_=Text), pg.JSONB))
        .table_valued(column("id", BigInteger), column("token", Text),
                      column("result", pg.JSONB), column("running", Text))
        .render_derived(name="batch", with_types=True)
    )
    .cte("finished")
    .prefix_with("MATERIALIZED")
)
_MARKED = (
    update(jobs)
    .where(held(_FINISHED.c.token, _FINISHED.c.id, running=_FINISHED.c.running),
           # The rows by their ids as well: a plan that cannot depend on the table's
           # statistics. Joined alone, a table not yet analysed (a fresh one, or one that
           # grew by a large batch) is read whole for every batch: measured on 20,000 rows,
           # 17-20 ms against 7 ms for 200 jobs.
           jobs.c.id == any_(func.array(select(_FINISHED.c.id).scalar_subquery())),
           # Jobs whose end must be acted on go through ``Leases._complete_followed``
           # (``store/workflows.py``): left out here, as they are when this reads the row
           # after waiting for the lock of an enqueue that just gave it a dependent.
           jobs.c.on_final.is_(None))
    # A JSON null in the batch reads as SQL NULL; stored is the JSON null, as on SQLite.
    .values(state=DONE,
            result=func.coalesce(_FINISHED.c.result, cast(literal("null"), pg.JSONB)),
            finished_at=db_now(), **DONE_LEASE)
    .returning(jobs.c.id, _FINISHED.c.token)
    .cte("marked")
)
#: The waiters of ``GET /jobs/{id}?wait=`` hear of the batch in the same statement (no round
#: trip more): one notification on FINAL_CHANNEL, sent at commit, with the ids that took. An
#: uncorrelated subquery runs once, and not at all when no row took (no output row needs it).
_MARK_DONE = select(
    _MARKED.c.token,
    select(func.pg_notify(FINAL_CHANNEL, _final_payload(_MARKED.c.id)))
    .correlate(None).scalar_subquery().label("notified"),
)


_decode_json = json.JSONDecoder().decode
_JSON_NULL = cast(literal("null"), pg.JSONB)


def _json_loads(data: bytes) -> Any:
    """JSON and JSONB values as psycopg hands them over, as bytes. ``json.loads`` would first
    guess their encoding, a third of the decoding of a claimed job's small payload; they are
    UTF-8, as ``json.loads`` would have guessed for any text it can read."""
    return _decode_json(data.decode())


class Postgres:
    name = "postgresql"
    single_writer = False

    def make_engine(self, settings: Settings) -> Engine:
        engine = create_engine(
            settings.sqlalchemy_url,
            **pool_options(settings),
            pool_recycle=1800,
            json_deserializer=_json_loads,
            connect_args={
                "connect_timeout": max(1, int(settings.db_timeout_seconds)),
                "application_name": "jobq",
                **network_deadlines(settings.db_network_timeout_seconds),
                **_driver_args(settings),
            },
        )

        _ping_when_idle(engine)
        _check_role_deadlines(engine, settings)
        @event.listens_for(engine, "connect")
        def _set_up_session(dbapi_conn: Any, _record: Any) -> None:
            session = session_settings(settings, dbapi_conn.info.server_version)
            # One round trip for all of them (set_config, not one SET each).
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT " + ", ".join("set_config(%s, %s, false)" for _ in session),
                            [x for item in session.items() for x in item])
            dbapi_conn.commit()

        return engine

    def insert(self, table: Table) -> pg.Insert:
        return pg.insert(table)

    def any_of(self, col: Any, items: Iterable[Any], item_type: Any) -> Any:
        # One array parameter: the statement is prepared once, not once per length.
        return col == any_(bindparam(None, list(items), type_=pg.ARRAY(item_type)))

    def enqueue_statement(self, lanes: bool = False) -> Any:
        """The jobs travel as one JSON array, ``INSERT … SELECT … FROM
        jsonb_array_elements(:given) WITH ORDINALITY ORDER BY ordinality``. Measured on 2
        cores with fsync on, 1,000 jobs per transaction: about 20,000 jobs/s, against 4,200
        for SQLAlchemy's multi-row VALUES (psycopg parses its 8,000 placeholders in Python,
        every time) and about half as fast again for ``unnest()`` of one array per field
        (psycopg quotes each array element in Python)."""
        given = (
            func.jsonb_array_elements(cast(bindparam("given"), pg.JSONB))
            .table_valued(column("value", pg.JSONB), with_ordinality="ord")
            .render_derived(name="given")
        )
        v = given.c.value
        # The concurrency key's columns only in the statement for batches that have one
        # (``_values``).
        lane_columns = ["concurrency_key", "concurrency_limit"] if lanes else []
        lane_values = ([v["concurrency_key"].astext,
                        cast(v["concurrency_limit"].astext, Integer)] if lanes else [])
        made = (
            pg.insert(jobs)
            .from_select(
                ["task_type", "payload", "queue", "priority", "max_attempts", "idempotency_key",
                 *lane_columns, "state", "attempts", "run_at", "created_at", "tags", "meta",
                 "timeout_seconds", "trace_context"],
                select(
                    v["task_type"].astext, v["payload"], v["queue"].astext,
                    cast(v["priority"].astext, Integer), cast(v["max_attempts"].astext, Integer),
                    v["idempotency_key"].astext, *lane_values, literal(PENDING), literal(0),
                    func.coalesce(
                        cast(v["at"].astext, pg.TIMESTAMP(timezone=True)),
                        seconds_from_now(cast(v["delay"].astext, Float)),
                    ),
                    db_now(),
                    # A JSON null (no tags, no meta) is stored as SQL NULL (tables.JsonOrNull).
                    func.nullif(v["tags"], _JSON_NULL), func.nullif(v["meta"], _JSON_NULL),
                    cast(v["timeout_seconds"].astext, Float),
                    v["trace_context"].astext,  # JSON null: NULL
                ).order_by(given.c.ord),
            )
            .on_conflict_do_nothing(index_elements=[jobs.c.queue, jobs.c.idempotency_key],
                                    index_where=KEYED)
            .returning(jobs.c.id, jobs.c.idempotency_key, jobs.c.run_at, jobs.c.created_at,
                       jobs.c.queue)
        )
        # The wake-up rides on the INSERT itself (a round trip fewer, which was an eighth of
        # a 100-job batch's time): once per queue that got a job due now, sent at commit.
        # PostgreSQL delivers identical notifications of one transaction once, so a batch
        # written in several chunks still wakes each queue's workers once.
        ins = made.cte("ins")
        due = select(ins.c.queue).where(ins.c.run_at <= ins.c.created_at).distinct().subquery()
        woken = select(func.count(func.pg_notify(NOTIFY_CHANNEL, due.c.queue))).scalar_subquery()
        return select(ins.c.id, ins.c.idempotency_key, ins.c.run_at, ins.c.created_at,
                      ins.c.queue, woken.label("woken"))

    def enqueue_params(self, rows: list[dict[str, Any]], engine: Engine) -> Any:
        dialect, to_utc = engine.dialect, jobs.c.run_at.type.process_bind_param

        def run_at(value: Any) -> str:  # payloads hold JSON values only: this sees run_at
            if not isinstance(value, datetime):
                raise TypeError(f"{type(value).__name__} is not JSON serializable")
            return to_utc(value, dialect).isoformat()  # naive means UTC, as for one job

        return {"given": json.dumps(rows, default=run_at)}

    def claim_runner(self, db: Connections, probe: Select[Any], claim: Any) -> ClaimRunner:
        # One statement that is its own transaction: one round trip instead of three (BEGIN,
        # claim, COMMIT), which is most of what an idle worker's pickup waits for; past
        # SQLAlchemy's execution layer (``store/direct.py``): a busy worker's claims are many
        # and small.
        return Direct(claim, db.engine).run

    def completion_runner(self, db: Connections) -> CompletionRunner:
        # One UPDATE in autocommit: one round trip, whatever the batch size.
        mark_done = Direct(_MARK_DONE, db.engine).run

        def run(finished: Sequence[tuple[Lease, Any]]) -> set[str]:
            done = json.dumps([{"id": lease.job_id, "token": lease.token,
                                "result": result, "running": RUNNING}
                               for lease, result in finished])
            return {row.token for row in mark_done({"c_done": done})}

        return run

    def one_statement(self, db: Connections) -> AbstractContextManager[Connection]:
        # Its own transaction: no BEGIN and COMMIT round trips.
        return db.autocommit()

    def statement_runner(self, db: Connections, stmt: Any) -> StatementRunner:
        # In autocommit, past SQLAlchemy's execution layer (``store/direct.py``).
        return Direct(stmt, db.engine).run

    def wake(self, conn: Connection, queues: Iterable[str]) -> None:
        # Sent by PostgreSQL at commit, never for a rolled-back transaction.
        for queue in sorted(set(queues)):
            conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, queue)))

    def finished(self, conn: Connection, ids: Iterable[int]) -> None:
        # Sent at commit (never for a rolled-back transaction), like ``wake``.
        ids = sorted(set(ids))
        for start in range(0, len(ids), FINAL_IDS_PER_NOTE):
            chunk = ",".join(map(str, ids[start:start + FINAL_IDS_PER_NOTE]))
            conn.execute(select(func.pg_notify(FINAL_CHANNEL, chunk)))

    def listen_final(
        self, engine: Engine, heard: Callable[[list[int] | None], None], settings: Settings,
    ) -> Coroutine[Any, Any, None] | None:
        dsn = _listen_target(engine, settings)
        if dsn is None:
            return None
        return listen_final(dsn, heard, network_deadlines(settings.db_network_timeout_seconds))

    def listen(
        self, engine: Engine, queues: Collection[str], wake: Callable[[], None],
        settings: Settings,
    ) -> Coroutine[Any, Any, None] | None:
        dsn = _listen_target(engine, settings)
        if dsn is None:
            return None
        return listen(dsn, queues, wake, network_deadlines(settings.db_network_timeout_seconds))

    def unbounded(self, conn: Connection) -> None:
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")

    def lock_for_migration(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})

    def rebuilding_tables(self, conn: Connection) -> AbstractContextManager[None]:
        return nullcontext()  # ALTER TABLE does it all, inside the transaction

    def check_references(self, conn: Connection) -> None:
        pass  # enforced at every statement

    def numbers(self, n: int) -> tuple[Select[Any], Any]:
        series = func.generate_series(1, n).table_valued("i").render_derived(name="series")
        return select(series.c.i), series.c.i

    def after_bulk_load(self, conn: Connection) -> None:
        # What autovacuum would do after such an insert; the claim's plan depends on it.
        conn.exec_driver_sql("ANALYZE jobq_jobs")

    def server_settings(self, conn: Connection) -> dict[str, Any]:
        return {name: conn.exec_driver_sql(f"SHOW {name}").scalar()
                for name in ("server_version", "fsync", "synchronous_commit",
                             "shared_buffers", "wal_level", "max_connections")}


def network_deadlines(seconds: float) -> dict[str, int]:
    """libpq's options that bound how long a dead peer can keep a call waiting.

    A partition leaves a socket with nothing to read and, if a request was in flight, data
    never acknowledged. The TCP user timeout fails the connection when sent data goes
    unacknowledged that long; keepalives probe a silent connection after a third of it, and
    with the user timeout set the kernel gives up on them after the same time. Without these
    a call cut off by a partition waits for the kernel's retransmissions (about 15 minutes)
    or its keepalive (two hours), and holds a worker thread all along.
    """
    whole = max(1, int(seconds))
    return {
        "keepalives": 1,
        "keepalives_idle": max(1, whole // 3),
        "keepalives_interval": max(1, whole // 6),
        "keepalives_count": 3,
        "tcp_user_timeout": whole * 1000,
    }


def session_settings(settings: Settings, server_version: int = 150000) -> dict[str, str]:
    """What every session of jobq sets on the server when it connects.

    Timestamps arrive in UTC and need no conversion (tables.Timestamp); a session that is
    somehow not in UTC still reads right, only how they are shown changes. The two timeouts are the server's
    side of the deadlines: a client that vanished mid-transaction (a partition, a frozen
    process) would otherwise hold its row locks until the server's keepalive notices, two
    hours later, and rescue skips locked rows.
    """
    if settings.db_pooler == "transaction":
        # A pooler in transaction mode carries TimeZone over to every server connection it
        # hands a client, but not the timeouts: set here they would land on the one server
        # connection that ran this, stay there for its later clients (other programs'
        # too), and be missing on the others. They belong to jobq's role there (README,
        # "Behind PgBouncer"); _check_role_deadlines says when they are not.
        return {"TimeZone": "UTC"}
    return {"TimeZone": "UTC", **_deadlines(settings),
            **_server_network(settings.db_network_timeout_seconds, server_version)}


def _server_network(seconds: float, server_version: int) -> dict[str, str]:
    """The server's side of the network deadlines. A backend still running a statement for a
    client that vanished (waiting on a lock, or sending a large answer nobody reads) is not
    idle in a transaction: it holds its locks until the statement ends. Its own keepalives
    and user timeout let the server's kernel declare the connection dead, and
    client_connection_check_interval (PostgreSQL 14 and later) makes the backend look, and
    end the statement, while it runs."""
    whole = max(1, int(seconds))
    out = {
        "tcp_keepalives_idle": str(max(1, whole // 3)),
        "tcp_keepalives_interval": str(max(1, whole // 6)),
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": f"{whole * 1000}ms",
    }
    if server_version >= 140000:
        out["client_connection_check_interval"] = f"{max(1, whole // 3) * 1000}ms"
    return out


def _deadlines(settings: Settings) -> dict[str, str]:
    return {
        "statement_timeout": f"{int(settings.db_statement_timeout_seconds * 1000)}ms",
        "idle_in_transaction_session_timeout":
            f"{int(settings.db_idle_in_transaction_seconds * 1000)}ms",
    }


def _check_role_deadlines(engine: Engine, settings: Settings) -> None:
    """Behind a transaction pooler, warn once per process, at its first connection, when
    the server's own timeouts (the role's or the database's) are not jobq's settings."""
    if settings.db_pooler != "transaction":
        return

    @event.listens_for(engine, "first_connect")
    def _check(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                        [list(_deadlines(settings))])
            have = {name: f"{setting}ms" for name, setting in cur.fetchall()}  # in ms
        dbapi_conn.rollback()
        wrong = {k: v for k, v in _deadlines(settings).items() if have.get(k) != v}
        if wrong:
            log.warning(
                "JOBQ_DB_POOLER=transaction: jobq cannot set its sessions' timeouts through "
                "the pooler, and the server's differ (%s); set them on jobq's role: %s",
                ", ".join(f"{k} is {have.get(k)}" for k in wrong),
                "; ".join(f"ALTER ROLE ... SET {k} = '{v}'" for k, v in wrong.items()))


def _driver_args(settings: Settings) -> dict[str, Any]:
    """psycopg's connection arguments that depend on what sits between jobq and PostgreSQL.

    Behind a pooler in transaction mode, psycopg must prepare nothing. On its own it prepares
    a statement on the server once it has run ``prepare_threshold`` (5) times, under a name
    (``_pg3_0``, …) that exists in one server connection only; the pooler hands the next
    transaction another one, where the name is unknown or is another client's statement
    ("prepared statement … already exists / does not exist", "bind message supplies 2
    parameters, but … requires 12"). PgBouncer < 1.21 cannot route them at all.

    Nothing else jobq does needs a session: its advisory locks are transaction-scoped, it uses
    no temporary tables, WITH HOLD or server-side cursors, ``unbounded`` is a SET LOCAL, and
    of the session's settings only the time zone is kept there (``session_settings``), a
    parameter PgBouncer tracks per client and sets again on each server connection it hands
    over; Timestamp reads right in any zone besides.
    """
    if settings.db_pooler == "transaction":
        return {"prepare_threshold": None}
    return {}


def _listen_target(engine: Engine, settings: Settings) -> str | None:
    """Where the LISTEN connection goes: JOBQ_LISTEN_URL when set; else the engine's own
    server, unless that is a pooler in transaction mode, which would hand the LISTEN to one
    server connection and the notifications to whichever client has it then (or to none)."""
    if settings.listen_url is not None:  # libpq reads the URL itself, many hosts and all
        return settings.listen_url.replace("postgresql+psycopg://", "postgresql://", 1)
    if settings.db_pooler == "transaction":
        log.warning("JOBQ_DB_POOLER=transaction and no JOBQ_LISTEN_URL: no LISTEN, so idle "
                    "workers find new jobs by polling, every JOBQ_POLL_INTERVAL_SECONDS "
                    "(%gs)", settings.poll_interval_seconds)
        return None
    return listen_dsn(engine)


#: A pooled connection idle for longer than this is tested before it is handed out.
IDLE_PING_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection on checkout only when it has been idle a while.

    A restarted server leaves dead connections in the pool. Testing every checkout (the
    pool's pre-ping) costs a round trip each time: half of a one-job claim or enqueue. A
    connection given back less than a second ago was alive then; if the server died since,
    its statement fails, SQLAlchemy sees the disconnect and throws away the whole pool, and
    the caller's StoreUnavailable is retried (workers) or answered 503 (the API), as for any
    outage. Raising DisconnectionError here makes the pool replace the connection.
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _test_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except psycopg.Error as exc:
            raise sa_exc.DisconnectionError(f"pooled connection is dead: {exc}") from exc


def listen_dsn(engine: Engine) -> str | None:
    """The libpq connection string of a PostgreSQL engine; None for another database.

    Made from what the dialect itself hands to psycopg for the engine's URL, so that it names
    the same servers: with several hosts (``host=h1,h2 port=p1,p2``, and
    ``target_session_attrs``) the URL's own rendering would put them in repeated ``host=h:p``
    query parameters, which libpq reads as one host named ``h2:p2``."""
    if engine.dialect.name != "postgresql":
        return None
    _args, params = engine.dialect.create_connect_args(engine.url)
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items()
                                             if isinstance(v, (str, int))})


async def listen(dsn: str, queues: Collection[str], wake: Callable[[], None],
                 deadlines: dict[str, int] | None = None) -> None:
    """Call ``wake`` for every notification about one of ``queues``, and once after each
    (re)connection, which catches up on anything sent while the connection was down.

    Runs until cancelled; reconnects with a growing pause when the connection fails. A
    notification is only a hint: one that is lost (the connection dropped, a pooler in
    transaction mode swallowed LISTEN) costs at most one poll interval, as workers keep
    polling.
    """
    failures = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=10, application_name="jobq-listen",
                # A peer that vanished without a word (a partition) is noticed as on every
                # other connection of jobq (``network_deadlines``), and the connection is made
                # again; polling covers the gap.
                **(deadlines or network_deadlines(10)),
            ) as conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                failures = 0
                wake()
                async for note in conn.notifies():
                    if note.payload in queues:
                        wake()
        except (psycopg.Error, OSError) as exc:
            failures += 1
            pause = min(0.2 * 2**failures, 10.0)
            log.warning("LISTEN connection failed (try %d, again in %.1fs); polling meanwhile: "
                        "%s", failures, pause, exc)
            await asyncio.sleep(pause)


async def listen_final(dsn: str, heard: Callable[[list[int] | None], None],
                       deadlines: dict[str, int] | None = None) -> None:
    """Call ``heard(ids)`` for every FINAL_CHANNEL notification, ``heard(None)`` ("any job may
    have finished") for one without ids and after each (re)connection, which covers what was
    sent while the connection was down. Runs until cancelled, reconnecting as ``listen``."""
    failures = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=10, application_name="jobq-waits",
                **(deadlines or network_deadlines(10)),
            ) as conn:
                await conn.execute(f"LISTEN {FINAL_CHANNEL}")
                failures = 0
                heard(None)
                async for note in conn.notifies():
                    try:
                        ids = [int(x) for x in note.payload.split(",")] if note.payload else None
                    except ValueError:  # not ours: look again, all of them
                        ids = None
                    heard(ids)
        except (psycopg.Error, OSError) as exc:
            failures += 1
            pause = min(0.2 * 2**failures, 10.0)
            log.warning("LISTEN %s failed (try %d, again in %.1fs); waits re-check slowly "
                        "meanwhile: %s", FINAL_CHANNEL, failures, pause, exc)
            await asyncio.sleep(pause)
