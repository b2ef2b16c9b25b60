"""Settings: defaults, JOBQ_* environment parsing, and errors that name the variable."""

from __future__ import annotations

import os

import pytest

from jobq.errors import ConfigError
from jobq.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No JOBQ_* variable of the developer's shell leaks into these tests."""
    for key in list(os.environ):
        if key.upper().startswith("JOBQ_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = load_settings()
    assert s.database_url == "sqlite:///jobq.db"
    assert s.sqlalchemy_url == "sqlite:///jobq.db"
    assert s.is_sqlite is True
    assert s.max_attempts == 3
    assert s.tasks == []
    assert s.queues == ["default"]
    assert s.lease_seconds == 30.0
    assert s.heartbeat_interval_seconds is None
    assert s.heartbeat_seconds == pytest.approx(10.0)
    assert s.auto_migrate is True
    assert (s.backoff_base_seconds, s.backoff_cap_seconds) == (1.0, 300.0)
    assert (s.host, s.port, s.log_level) == ("127.0.0.1", 8000, "info")


def test_env_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "JOBQ_DATABASE_URL": "postgresql://jobq:secret@db.example:5433/jobs",
        "JOBQ_MAX_ATTEMPTS": "7",
        "JOBQ_LEASE_SECONDS": "12.5",
        "JOBQ_HEARTBEAT_INTERVAL_SECONDS": "2",
        "JOBQ_CONCURRENCY": "32",
        "JOBQ_AUTO_MIGRATE": "false",
        "JOBQ_LOG_LEVEL": "DEBUG",
        "JOBQ_PORT": "9090",
        "JOBQ_BACKOFF_BASE_SECONDS": "0.5",
        "JOBQ_BACKOFF_CAP_SECONDS": "60",
        "JOBQ_SOMETHING_UNKNOWN": "ignored",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.database_url == "postgresql://jobq:secret@db.example:5433/jobs"
    assert s.sqlalchemy_url == "postgresql+psycopg://jobq:secret@db.example:5433/jobs"
    assert s.is_sqlite is False
    assert s.max_attempts == 7
    assert s.lease_seconds == 12.5
    assert s.heartbeat_seconds == 2.0
    assert s.concurrency == 32
    assert s.auto_migrate is False
    assert s.log_level == "debug"
    assert s.port == 9090
    assert (s.backoff_base_seconds, s.backoff_cap_seconds) == (0.5, 60.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("myapp.tasks", ["myapp.tasks"]),
        ("myapp.tasks,billing.jobs", ["myapp.tasks", "billing.jobs"]),
        (" myapp.tasks , billing.jobs ,, ", ["myapp.tasks", "billing.jobs"]),
        ("", []),
    ],
)
def test_jobq_tasks_is_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("JOBQ_TASKS", raw)
    assert load_settings().tasks == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("default", ["default"]),
        ("high,default,low", ["high", "default", "low"]),
        (" mail , reports.daily:v2 ", ["mail", "reports.daily:v2"]),
    ],
)
def test_jobq_queues_is_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("JOBQ_QUEUES", raw)
    assert load_settings().queues == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("sqlite:////abs/path.db", "sqlite:////abs/path.db"),
    ],
)
def test_sqlalchemy_url(url: str, expected: str) -> None:
    s = load_settings(database_url=url)
    assert s.sqlalchemy_url == expected
    assert s.is_sqlite is url.startswith("sqlite")


def test_overrides_beat_the_environment_and_none_means_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBQ_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("JOBQ_QUEUES", "a,b")
    s = load_settings(max_attempts=5, queues=None)
    assert s.max_attempts == 5
    assert s.queues == ["a", "b"]
    assert load_settings(queues="x,y").queues == ["x", "y"]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("JOBQ_MAX_ATTEMPTS", "0"),
        ("JOBQ_MAX_ATTEMPTS", "three"),
        ("JOBQ_MAX_ATTEMPTS", "1001"),
        ("JOBQ_LEASE_SECONDS", "0"),
        ("JOBQ_LEASE_SECONDS", "-5"),
        ("JOBQ_DATABASE_URL", "mysql://u@h/db"),
        ("JOBQ_DATABASE_URL", "jobq.db"),
        ("JOBQ_QUEUES", ""),
        ("JOBQ_QUEUES", " , "),
        ("JOBQ_QUEUES", "good,bad queue"),
        ("JOBQ_QUEUES", "-dash"),
        ("JOBQ_LOG_LEVEL", "verbose"),
        ("JOBQ_PORT", "70000"),
        ("JOBQ_CONCURRENCY", "0"),
        ("JOBQ_AUTO_MIGRATE", "perhaps"),
        ("JOBQ_DB_TIMEOUT_SECONDS", "0"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert var in str(err.value)


def test_every_bad_value_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQ_MAX_ATTEMPTS", "0")
    monkeypatch.setenv("JOBQ_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "JOBQ_MAX_ATTEMPTS" in str(err.value)
    assert "JOBQ_LOG_LEVEL" in str(err.value)


def test_queue_names_are_checked_when_given_as_a_list() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(queues=["ok", "trailing\n"])
    assert "JOBQ_QUEUES" in str(err.value)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"JOBQ_BACKOFF_BASE_SECONDS": "10", "JOBQ_BACKOFF_CAP_SECONDS": "5"},
         ["JOBQ_BACKOFF_CAP_SECONDS", "JOBQ_BACKOFF_BASE_SECONDS"]),
        ({"JOBQ_LEASE_SECONDS": "10", "JOBQ_HEARTBEAT_INTERVAL_SECONDS": "10"},
         ["JOBQ_HEARTBEAT_INTERVAL_SECONDS", "JOBQ_LEASE_SECONDS"]),
        # Two intervals and the fencing margin must fit in the lease: 2 × 4.6 + 1 > 10.
        ({"JOBQ_LEASE_SECONDS": "10", "JOBQ_HEARTBEAT_INTERVAL_SECONDS": "4.6"},
         ["JOBQ_HEARTBEAT_INTERVAL_SECONDS", "JOBQ_LEASE_SECONDS"]),
    ],
)
def test_inconsistent_values_name_the_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: list[str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    for name in names:
        assert name in str(err.value)


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(Exception):  # pydantic's ValidationError for a frozen model
        s.max_attempts = 9  # type: ignore[misc]
    assert s.max_attempts == 3


def test_direct_construction_matches_load_settings() -> None:
    assert Settings() == load_settings()


def test_settings_survive_the_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # `jobq api --processes N` hands its settings to uvicorn's children this way.
    from jobq.api.server import settings_environment

    given = Settings(database_url="sqlite:///x.db", tasks=["a.b", "c"], queues=["q1", "q2"],
                     lease_seconds=7.5, heartbeat_enabled=False, api_processes=3, port=9001)
    for name in list(os.environ):
        if name.startswith("JOBQ_"):
            monkeypatch.delenv(name)
    for name, value in settings_environment(given).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == given


# -- libpq's multi-host URLs (a primary and its standbys) --------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write",
         "postgresql+psycopg://u@/db?target_session_attrs=read-write&host=h1,h2&port=5432,5433"),
        ("postgres://u:p%40ss@h1,h2:5433/db",
         "postgresql+psycopg://u:p%40ss@/db?host=h1,h2&port=,5433"),
        ("postgresql://h1,h2", "postgresql+psycopg:///?host=h1,h2"),
        ("postgresql://u@[::1]:5432,[fe80::2]/db",
         "postgresql+psycopg://u@/db?host=::1,fe80::2&port=5432,"),
        ("postgresql+psycopg://u@a:1,b:2/db", "postgresql+psycopg://u@/db?host=a,b&port=1,2"),
        # One host, or hosts already in the query: left as they are.
        ("postgresql://u@[::1]:5432/db", "postgresql+psycopg://u@[::1]:5432/db"),
        ("postgresql://u@/db?host=/run/postgresql", "postgresql+psycopg://u@/db?host=/run/postgresql"),
    ],
)
def test_a_multi_host_url_moves_its_hosts_to_the_query(url: str, expected: str) -> None:
    assert load_settings(database_url=url).sqlalchemy_url == expected


def test_a_multi_host_url_reaches_libpq_as_its_lists_of_hosts_and_ports() -> None:
    from sqlalchemy import make_url
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    s = load_settings(database_url="postgresql://jobq:pw@a:5432,b:5433/jobs"
                      "?target_session_attrs=read-write&connect_timeout=3")
    _, params = PGDialect_psycopg().create_connect_args(make_url(s.sqlalchemy_url))
    assert {k: v for k, v in params.items() if k != "context"} == {
        "host": "a,b", "port": "5432,5433", "user": "jobq", "password": "pw",
        "dbname": "jobs", "target_session_attrs": "read-write", "connect_timeout": "3"}


def test_the_listen_connection_names_every_host() -> None:
    import psycopg

    from jobq.store import make_engine
    from jobq.store.postgres import listen_dsn

    engine = make_engine(load_settings(
        database_url="postgresql://u:p w@a:5432,b:5433/jobs?target_session_attrs=read-write"))
    try:
        dsn = listen_dsn(engine)
    finally:
        engine.dispose()
    assert dsn is not None
    assert psycopg.conninfo.conninfo_to_dict(dsn) == {
        "host": "a,b", "port": "5432,5433", "user": "u", "password": "p w", "dbname": "jobs",
        "target_session_attrs": "read-write"}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://h1:x,h2/db", "port must be a number"),
        ("postgresql://h1,,h2/db", "empty host"),
        ("postgresql://h1,h2/db?port=5432", "not in host="),
        ("postgresql://[::1]x,h2/db", "is not a host"),
    ],
)
def test_a_bad_multi_host_url_is_refused_at_start(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(database_url=url)
    assert "JOBQ_DATABASE_URL" in str(err.value) and says in str(err.value)


def test_pooler_and_listen_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (load_settings().db_pooler, load_settings().listen_url) == ("none", None)
    monkeypatch.setenv("JOBQ_DATABASE_URL", "postgresql://jobq@pgbouncer:6432/jobs")
    monkeypatch.setenv("JOBQ_DB_POOLER", "Transaction")
    monkeypatch.setenv("JOBQ_LISTEN_URL", "postgresql://jobq@db:5432/jobs")
    s = load_settings()
    assert (s.db_pooler, s.listen_url) == ("transaction", "postgresql://jobq@db:5432/jobs")
    monkeypatch.setenv("JOBQ_LISTEN_URL", "")  # empty: unset
    assert load_settings().listen_url is None


@pytest.mark.parametrize(("env", "named"), [
    ({"JOBQ_DB_POOLER": "statement"}, "JOBQ_DB_POOLER"),
    ({"JOBQ_LISTEN_URL": "mysql://db/jobs"}, "JOBQ_LISTEN_URL"),
    # A pooler or a listen URL with a SQLite database is a mistake, not a no-op.
    ({"JOBQ_DATABASE_URL": "sqlite:///x.db", "JOBQ_DB_POOLER": "transaction"},
     "JOBQ_DB_POOLER"),
    ({"JOBQ_DATABASE_URL": "sqlite:///x.db", "JOBQ_LISTEN_URL": "postgresql://db/jobs"},
     "JOBQ_LISTEN_URL"),
])
def test_bad_pooler_settings_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    monkeypatch.setenv("JOBQ_DATABASE_URL", "postgresql://jobq@db:5432/jobs")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_where_the_listen_connection_goes() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from jobq.store import make_engine
    from jobq.store.postgres import _listen_target

    url = "postgresql://u@pgbouncer:6432/jobs"
    listen = "postgresql://u@a:5432,b:5433/jobs?target_session_attrs=read-write"
    for pooler, listen_url, expected in [
        ("none", None, "postgresql://u@pgbouncer:6432/jobs"),
        ("transaction", listen, listen),  # as libpq takes it: every host
        ("transaction", None, None),  # no LISTEN through a transaction pooler
    ]:
        s = load_settings(database_url=url, db_pooler=pooler, listen_url=listen_url)
        engine = make_engine(s)
        try:
            got = _listen_target(engine, s)
        finally:
            engine.dispose()
        assert (got if got is None else conninfo_to_dict(got)) == (
            expected if expected is None else conninfo_to_dict(expected))
