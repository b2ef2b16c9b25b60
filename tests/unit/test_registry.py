"""The task registry: names are keys, never imports; handlers are classified once."""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import jobq
import jobq.registry as registry_module
from jobq.errors import Cancel, ConfigError, Snooze, UnknownTask
from jobq.registry import JobContext, Task, TaskRegistry, load_registry, task
from jobq.retry import DEFAULT_MAX_SNOOZES, Backoff, RetryPolicy


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> TaskRegistry:
    """Point @task at an empty registry for the duration of a test."""
    reg = TaskRegistry()
    monkeypatch.setattr(registry_module, "default_registry", reg)
    return reg


def test_task_decorator_registers_and_returns_the_function(fresh: TaskRegistry) -> None:
    def handler(payload: Any) -> Any:
        return payload

    decorated = task("send_email", max_attempts=5)(handler)
    assert decorated is handler
    t = fresh.get("send_email")
    assert t == Task(name="send_email", fn=handler, max_attempts=5, is_async=False,
                     wants_context=False)
    assert "send_email" in fresh
    assert "other" not in fresh
    assert fresh.names() == ["send_email"]


def test_decorator_syntax_and_default_max_attempts(fresh: TaskRegistry) -> None:
    @task("resize")
    def resize(payload: Any) -> Any:
        return {"size": payload}

    assert resize(3) == {"size": 3}  # still callable as a plain function
    assert fresh.get("resize").max_attempts is None


def test_context_detection() -> None:
    reg = TaskRegistry()

    def one(payload: Any) -> None: ...
    def two(payload: Any, ctx: JobContext) -> None: ...
    def two_with_default(payload: Any, ctx: JobContext | None = None) -> None: ...
    def keyword_only(payload: Any, *, ctx: JobContext | None = None) -> None: ...

    class Handler:
        def __call__(self, payload: Any, ctx: JobContext) -> None: ...

        def method(self, payload: Any) -> None: ...

    assert reg.register("one", one).wants_context is False
    assert reg.register("two", two).wants_context is True
    assert reg.register("two_default", two_with_default).wants_context is True
    assert reg.register("kwonly", keyword_only).wants_context is False
    assert reg.register("callable", Handler()).wants_context is True
    assert reg.register("method", Handler().method).wants_context is False  # self is bound
    assert reg.register("lambda", lambda p: p).wants_context is False


def test_async_detection() -> None:
    reg = TaskRegistry()

    async def a1(payload: Any) -> Any:
        return payload

    async def a2(payload: Any, ctx: JobContext) -> Any:
        return ctx.attempt

    def s1(payload: Any) -> Any:
        return payload

    assert (reg.register("a1", a1).is_async, reg.register("a1", a1).wants_context) == (True, False)
    assert (reg.register("a2", a2).is_async, reg.register("a2", a2).wants_context) == (True, True)
    assert reg.register("s1", s1).is_async is False


def test_duplicate_name_with_another_handler_is_refused(fresh: TaskRegistry) -> None:
    @task("dup")
    def first(payload: Any) -> None: ...

    with pytest.raises(ValueError, match="already registered"):

        @task("dup")
        def second(payload: Any) -> None: ...

    assert fresh.get("dup").fn is first
    # The same function again (a module imported twice) is harmless.
    task("dup")(first)
    assert fresh.names() == ["dup"]


@pytest.mark.parametrize(
    "name",
    ["", " ", "has space", "-leading-dash", "_leading_underscore", "slash/name", "semi;colon",
     "ünicode", "a" * 129, "trailing\n", "new\nline", "tab\t"],
)
def test_bad_names_are_refused(name: str) -> None:
    reg = TaskRegistry()
    with pytest.raises(ValueError, match="task name"):
        reg.register(name, lambda p: p)
    assert reg.names() == []


@pytest.mark.parametrize("name", ["a", "send_email", "billing.invoice:v2", "A-1", "a" * 128])
def test_good_names_are_accepted(name: str) -> None:
    reg = TaskRegistry()
    reg.register(name, lambda p: p)
    assert reg.names() == [name]


def test_bad_max_attempts_is_refused() -> None:
    reg = TaskRegistry()
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_attempts"):
            reg.register("t", lambda p: p, max_attempts=bad)
    assert reg.register("t", lambda p: p, max_attempts=1).max_attempts == 1


def test_unknown_task_lists_the_known_names() -> None:
    reg = TaskRegistry()
    for name in ("zeta", "alpha", "mid"):
        reg.register(name, lambda p: p)
    with pytest.raises(UnknownTask) as err:
        reg.get("os.system")
    assert err.value.task_type == "os.system"
    assert err.value.known == ["alpha", "mid", "zeta"]
    assert "alpha, mid, zeta" in str(err.value)
    assert "os.system" in str(err.value)


def test_names_are_sorted() -> None:
    reg = TaskRegistry()
    for name in ("b", "c", "a"):
        reg.register(name, lambda p: p)
    assert reg.names() == ["a", "b", "c"]


def test_load_registry_has_the_builtin_tasks() -> None:
    reg = load_registry([])
    assert {"test", "echo", "sleep", "fail", "noop"} <= set(reg.names())
    assert reg.get("test").wants_context is True
    assert reg.get("sleep").is_async is True
    assert reg.get("echo").fn("x") == "x"


def test_load_registry_imports_the_named_modules(
    fresh: TaskRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"jobq_test_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from jobq.registry import task\n\n"
        "@task('custom.greet', max_attempts=7)\n"
        "def greet(payload, ctx):\n"
        "    return 'hi ' + payload\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        reg = load_registry([module])
        assert reg is fresh
        t = reg.get("custom.greet")
        assert (t.max_attempts, t.wants_context, t.fn("you", None)) == (7, True, "hi you")
    finally:
        sys.modules.pop(module, None)


@pytest.mark.parametrize("module", ["no_such_module_jobq_xyz", "jobq.no_such_submodule"])
def test_load_registry_with_a_missing_module_names_jobq_tasks(module: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_registry(["jobq.builtin_tasks", module])
    assert "JOBQ_TASKS" in str(err.value)
    assert module in str(err.value)


def test_context_is_immutable() -> None:
    ctx = JobContext(job_id=1, attempt=2, max_attempts=3, queue="q", task_type="t", worker_id="w")
    with pytest.raises(AttributeError):
        ctx.attempt = 3  # type: ignore[misc]


# -- The task's own retry policy (issue 13) ---------------------------------------------------


def test_retry_options_are_kept_on_the_task_and_decide_what_retries(fresh: TaskRegistry) -> None:
    def backoff(attempt: int) -> float:
        return 7.0 * attempt

    @task("fetch", retry_on=(TimeoutError, ConnectionError), discard_on=ConnectionResetError,
          backoff=backoff, max_snoozes=3)
    def fetch(payload: Any) -> None: ...

    policy = fresh.get("fetch").policy
    assert policy.retry_on == (TimeoutError, ConnectionError)
    assert policy.discard_on == (ConnectionResetError,)  # one class is taken as a tuple
    assert policy.max_snoozes == 3
    assert policy.retries(TimeoutError()) and policy.retries(ConnectionRefusedError())
    assert not policy.retries(ConnectionResetError())  # discard_on first, though a retry_on
    assert not policy.retries(ValueError())  # not in retry_on: fails at once
    default = Backoff(base=1, cap=2)
    assert policy.delay(3, default) == 21.0


def test_without_options_every_error_retries_with_the_workers_backoff() -> None:
    policy = TaskRegistry().register("plain", lambda p: p).policy
    assert policy == RetryPolicy() and policy.max_snoozes == DEFAULT_MAX_SNOOZES
    assert policy.retries(ValueError()) and policy.retries(KeyError())
    assert policy.delay(1, Backoff(base=0, cap=0)) == 0.0


def test_backoff_base_and_cap_each_replace_the_workers_own() -> None:
    reg = TaskRegistry()
    default = Backoff(base=1, cap=1)
    base_only = reg.register("a", lambda p: p, backoff_base=100).policy
    cap_only = reg.register("b", lambda p: p, backoff_cap=0).policy
    both = reg.register("c", lambda p: p, backoff_base=0, backoff_cap=0).policy
    assert 0 <= base_only.delay(1, default) <= 1.0  # the worker's cap still holds
    assert cap_only.delay(5, default) == 0.0
    assert both.delay(1, Backoff(base=50, cap=50)) == 0.0


def test_a_backoff_callable_that_misbehaves_falls_back_to_the_default() -> None:
    reg = TaskRegistry()
    default = Backoff(base=0, cap=0)  # always 0: tells the fallback apart

    def raises(attempt: int) -> float:
        raise RuntimeError("bug")

    for name, fn in (("raises", raises), ("negative", lambda a: -1),
                     ("nan", lambda a: float("nan")), ("text", lambda a: "5")):
        assert reg.register(name, lambda p: p, backoff=fn).policy.delay(1, default) == 0.0


class _Custom(Exception):
    pass


@pytest.mark.parametrize(("options", "says"), [
    ({"retry_on": ValueError("not a class")}, "retry_on takes exception classes"),
    ({"retry_on": (int,)}, "retry_on takes exception classes"),
    ({"discard_on": (KeyboardInterrupt,)}, "discard_on takes exception classes"),
    ({"discard_on": 3}, "task 'bad': discard_on takes exception classes"),
    ({"retry_on": (Snooze,)}, "Snooze steers the job"),
    ({"discard_on": (Cancel,)}, "Cancel steers the job"),
    ({"retry_on": (_Custom, KeyError), "discard_on": (_Custom,)}, "_Custom: in both"),
    ({"backoff_base": -1}, "backoff_base must be seconds"),
    ({"backoff_cap": float("inf")}, "backoff_cap must be seconds"),
    ({"backoff_base": True}, "backoff_base must be seconds"),
    ({"backoff_base": "1"}, "backoff_base must be seconds"),
    ({"backoff_base": 10, "backoff_cap": 5}, "backoff_cap must be at least backoff_base"),
    ({"backoff": 5}, "backoff must be a callable"),
    ({"backoff": lambda a: 1, "backoff_cap": 5}, "not both"),
    ({"max_snoozes": -1}, "max_snoozes must be an integer"),
    ({"max_snoozes": 1.5}, "max_snoozes must be an integer"),
    ({"max_snoozes": 10**9}, "max_snoozes must be an integer"),
])
def test_bad_retry_options_are_refused_at_registration(options: dict[str, Any],
                                                       says: str) -> None:
    reg = TaskRegistry()
    with pytest.raises(ValueError, match=re.escape(says)):
        reg.register("bad", lambda p: p, **options)
    assert "bad" not in reg


def test_snooze_and_cancel_are_exported_and_check_their_arguments() -> None:
    assert jobq.Snooze is Snooze and jobq.Cancel is Cancel
    assert Snooze(0).seconds == 0.0 and Snooze(2.5).seconds == 2.5
    for bad in (-1, float("nan"), float("inf"), 367 * 86400, "5", True, None):
        with pytest.raises(ValueError, match="Snooze: seconds"):
            Snooze(bad)  # type: ignore[arg-type]
    assert Cancel("no longer wanted").reason == "no longer wanted"
    assert Cancel().reason
    with pytest.raises(TypeError):
        Cancel(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "says"), [
    ({"timeout_seconds": 0}, "timeout_seconds must be a number above 0"),
    ({"timeout_seconds": -1}, "timeout_seconds must be a number above 0"),
    ({"timeout_seconds": float("nan")}, "timeout_seconds must be a number above 0"),
    ({"timeout_seconds": 8 * 86400}, "timeout_seconds must be a number above 0"),
    ({"timeout_seconds": "5"}, "timeout_seconds must be a number above 0"),
    ({"timeout_seconds": True}, "timeout_seconds must be a number above 0"),
    ({"isolation": "thread"}, "isolation must be None or 'process'"),
    ({"isolation": "process"}, "needs the handler in a module"),  # a lambda of __main__?
])
def test_bad_timeout_and_isolation_are_refused_at_registration(options: dict[str, Any],
                                                               says: str) -> None:
    reg = TaskRegistry()

    def handler(p: Any) -> Any:
        return p

    if options.get("isolation") == "process":
        handler.__module__ = "__main__"  # as if declared in the script being run
    with pytest.raises(ValueError, match=re.escape(says)):
        reg.register("bad", handler, **options)
    assert "bad" not in reg


def test_a_task_keeps_its_timeout_and_isolation_and_jobtimeout_is_exported() -> None:
    reg = TaskRegistry()
    t = reg.register("t", lambda p: p, timeout_seconds=2, isolation="process")
    assert (t.timeout_seconds, t.isolation) == (2.0, "process")
    assert reg.register("u", lambda p: p).timeout_seconds is None
    assert jobq.JobTimeout(1.5).seconds == 1.5 and "1.5s" in str(jobq.JobTimeout(1.5))
