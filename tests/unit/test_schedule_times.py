"""Schedules: declared and checked in the task module; when their ticks fall (cron in a zone,
DST included; intervals anchored at the epoch); which due ticks a pass enqueues."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import jobq
import jobq.registry as registry_module
from jobq.errors import ConfigError
from jobq.registry import TaskRegistry, load_registry, task
from jobq.schedules import (
    DEFAULT_GRACE,
    MAX_TICKS_PER_PASS,
    InvalidSchedule,
    make_schedule,
)

UTC = timezone.utc


def at(*args: int, tz: Any = UTC) -> datetime:
    return datetime(*args, tzinfo=tz)


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> TaskRegistry:
    """Point @task and jobq.schedule at an empty registry for the duration of a test."""
    reg = TaskRegistry()
    monkeypatch.setattr(registry_module, "default_registry", reg)
    return reg


# -- declaring --------------------------------------------------------------------------------


def test_task_with_a_cron_schedule_and_another_through_jobq_schedule(fresh: TaskRegistry) -> None:
    @task("report", schedule="*/5 * * * *", schedule_tz="Europe/Berlin",
          schedule_payload={"kind": "short"})
    def report(payload: Any) -> Any:
        return payload

    jobq.schedule("report", "0 9 * * MON-FRI", name="report-daily", payload={"kind": "daily"})
    jobq.schedule("report", timedelta(seconds=30), name="report-often")
    by_name = {s.name: s for s in fresh.schedules()}
    assert sorted(by_name) == ["report", "report-daily", "report-often"]
    assert (by_name["report"].cron, by_name["report"].tz) == ("*/5 * * * *", "Europe/Berlin")
    assert by_name["report"].payload == {"kind": "short"}
    assert by_name["report-often"].expression == "every 30s"
    assert by_name["report-often"].interval == timedelta(seconds=30)
    fresh.check_schedules()


def test_every_is_an_interval(fresh: TaskRegistry) -> None:
    @task("poll", every=2.5)
    def poll(payload: Any) -> None: ...

    (s,) = fresh.schedules()
    assert (s.name, s.interval, s.expression) == ("poll", timedelta(seconds=2.5), "every 2.5s")


@pytest.mark.parametrize(("given", "says"), [
    ("*/5 * * *", "bad cron expression '*/5 * * *': Wrong number of fields"),
    ("61 * * * *", "Bad minute"),
    ("0 0 31 2 *", "Bad day-of-month"),
    (timedelta(milliseconds=500), "an interval from 1 s"),
    (0, "an interval from 1 s"),
    ([1], "give a cron expression"),
])
def test_a_bad_schedule_is_refused_at_declaration_naming_it(given: Any, says: str) -> None:
    with pytest.raises(InvalidSchedule) as err:
        make_schedule("report", given, name="nightly")
    assert "schedule 'nightly'" in str(err.value) and says in str(err.value)


def test_bad_zone_name_payload_and_options_are_refused() -> None:
    with pytest.raises(InvalidSchedule, match="unknown time zone 'Mars/Olympus'"):
        make_schedule("r", "* * * * *", tz="Mars/Olympus")
    with pytest.raises(InvalidSchedule, match="cron expressions only"):
        make_schedule("r", 30, tz="Europe/Berlin")
    with pytest.raises(InvalidSchedule, match="the name must match"):
        make_schedule("r", 30, name="no spaces")
    with pytest.raises(InvalidSchedule, match="payload"):
        make_schedule("r", 30, payload=float("nan"))
    with pytest.raises(InvalidSchedule, match="not both"):
        task("r", schedule="* * * * *", every=30)
    with pytest.raises(InvalidSchedule, match="need schedule= or every="):
        task("r", schedule_tz="Europe/Berlin")


def test_two_schedules_under_one_name_are_refused_unless_identical() -> None:
    reg = TaskRegistry()
    reg.add_schedule(make_schedule("report", "* * * * *"))
    reg.add_schedule(make_schedule("report", "* * * * *"))  # the same, imported twice
    with pytest.raises(InvalidSchedule, match="already declared.*name="):
        reg.add_schedule(make_schedule("report", "0 * * * *"))


def test_a_schedule_of_an_unknown_task_fails_at_start(fresh: TaskRegistry) -> None:
    jobq.schedule("no-such-task", 60)
    with pytest.raises(ConfigError, match="schedules of unknown tasks: 'no-such-task'"):
        load_registry([])


def test_a_task_module_with_a_bad_cron_expression_fails_at_start(
        fresh: TaskRegistry, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad_cron_tasks.py").write_text(
        "from jobq import task\n"
        "@task('nightly', schedule='0 25 * * *')\n"
        "def nightly(payload):\n"
        "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_registry(["bad_cron_tasks"])
    assert "'bad_cron_tasks'" in str(err.value) and "Bad hour" in str(err.value)


# -- when ticks fall --------------------------------------------------------------------------


def test_intervals_are_anchored_at_the_epoch() -> None:
    every30 = make_schedule("t", 30)
    assert every30.next_after(at(2026, 12, 3, 7, 0, 0)) == at(2026, 12, 3, 7, 0, 30)
    assert every30.next_after(at(2026, 12, 3, 7, 0, 29, 999999)) == at(2026, 12, 3, 7, 0, 30)
    hourly = make_schedule("t", timedelta(hours=1))
    assert hourly.next_after(at(2026, 12, 3, 7, 12)) == at(2026, 12, 3, 8)
    # The zone of the given time changes nothing: an interval is real time.
    berlin = at(2026, 12, 3, 8, 12, tz=timezone(timedelta(hours=1)))
    assert hourly.next_after(berlin) == at(2026, 12, 3, 8)


def test_cron_in_utc_and_strictly_after() -> None:
    s = make_schedule("t", "*/5 * * * *")
    assert s.next_after(at(2026, 12, 3, 7, 0)) == at(2026, 12, 3, 7, 5)
    assert s.next_after(at(2026, 12, 3, 7, 4, 59)) == at(2026, 12, 3, 7, 5)
    assert list(s.ticks(at(2026, 12, 3, 7, 0), at(2026, 12, 3, 7, 10))) == [
        at(2026, 12, 3, 7, 0), at(2026, 12, 3, 7, 5), at(2026, 12, 3, 7, 10)]


def test_cron_in_a_time_zone_follows_its_offset() -> None:
    nine = make_schedule("t", "0 9 * * *", tz="Europe/Berlin")
    assert nine.next_after(at(2026, 12, 3, 0)) == at(2026, 12, 3, 8)   # CET, UTC+1
    assert nine.next_after(at(2026, 7, 3, 0)) == at(2026, 7, 3, 7)     # CEST, UTC+2


def test_dst_a_time_that_does_not_exist_runs_at_the_next_that_does() -> None:
    # 2026-03-29: Berlin's clocks go from 02:00 to 03:00 (01:00 UTC).
    s = make_schedule("t", "30 2 * * *", tz="Europe/Berlin")
    assert s.next_after(at(2026, 3, 28, 12)) == at(2026, 3, 29, 1)      # 03:00 CEST
    assert s.next_after(at(2026, 3, 29, 1)) == at(2026, 3, 30, 0, 30)   # 02:30 CEST


def test_dst_a_time_that_exists_twice_runs_once() -> None:
    # 2026-10-25: Berlin's clocks go from 03:00 back to 02:00 (01:00 UTC): 02:30 comes twice.
    s = make_schedule("t", "30 2 * * *", tz="Europe/Berlin")
    day = list(s.ticks(at(2026, 10, 24, 12), at(2026, 10, 26, 12)))
    assert day == [at(2026, 10, 25, 0, 30), at(2026, 10, 26, 1, 30)]
    # From inside the second 02:30 hour, the next is the next day's, never the earlier copy.
    assert s.next_after(at(2026, 10, 25, 1, 10)) == at(2026, 10, 26, 1, 30)


def test_dst_a_stepping_expression_runs_in_both_copies_of_the_repeated_hour() -> None:
    s = make_schedule("t", "*/30 * * * *", tz="Europe/Berlin")
    ticks = list(s.ticks(at(2026, 10, 25, 0, 0), at(2026, 10, 25, 1, 59)))
    # 02:00, 02:30 CEST, then 02:00, 02:30 CET: four real half-hours, none twice.
    assert ticks == [at(2026, 10, 25, 0, 0), at(2026, 10, 25, 0, 30), at(2026, 10, 25, 1, 0),
                     at(2026, 10, 25, 1, 30)]


# -- which due ticks a pass enqueues ----------------------------------------------------------


def test_a_tick_is_a_key_and_a_job() -> None:
    s = make_schedule("report", "*/5 * * * *", name="r5", payload={"a": 1}, queue="reports")
    job = s.new_job(at(2026, 12, 3, 7, 5))
    assert job.idempotency_key == "schedule:r5:2026-12-03T07:05:00+00:00"
    assert (job.task_type, job.payload, job.queue) == ("report", {"a": 1}, "reports")


def test_due_ticks_within_the_grace_are_all_enqueued() -> None:
    s = make_schedule("t", 1)
    now = at(2026, 12, 3, 7, 0, 3, 500000)
    ticks, skipped = s.due(at(2026, 12, 3, 7, 0, 1), now)  # a pass 2.5 s late
    assert ticks == [at(2026, 12, 3, 7, 0, 1), at(2026, 12, 3, 7, 0, 2), at(2026, 12, 3, 7, 0, 3)]
    assert not skipped


def test_missed_ticks_are_skipped_by_default_and_caught_up_when_asked() -> None:
    now = at(2026, 12, 3, 9, 0, 30)
    since = at(2026, 12, 1, 9)  # the workers were away for two days
    daily = make_schedule("t", "0 9 * * *")
    assert daily.due(since, now) == ([at(2026, 12, 3, 9)], True)  # the latest: 30 s old
    assert daily.due(since, at(2026, 12, 3, 10)) == ([], True)    # an hour old: none
    later = make_schedule("t", "0 9 * * *", grace=timedelta(hours=2))
    assert later.due(since, at(2026, 12, 3, 10)) == ([at(2026, 12, 3, 9)], True)
    caught = make_schedule("t", "0 9 * * *", catch_up=True)
    assert caught.due(since, now) == (
        [at(2026, 12, 1, 9), at(2026, 12, 2, 9), at(2026, 12, 3, 9)], False)


def test_a_catch_up_is_done_in_bounded_steps() -> None:
    s = make_schedule("t", 1, catch_up=True)
    start = at(2026, 12, 3, 7)
    ticks, _ = s.due(start, start + timedelta(hours=1))
    assert len(ticks) == MAX_TICKS_PER_PASS and ticks[0] == start
    assert DEFAULT_GRACE == timedelta(seconds=60)


def test_the_definition_tells_a_changed_schedule() -> None:
    a = make_schedule("t", "*/5 * * * *")
    assert a.definition == make_schedule("t", "*/5  *  * * *").definition  # spacing
    assert a.definition != make_schedule("t", "*/5 * * * *", payload=1).definition
    assert a.definition != make_schedule("t", "*/5 * * * *", tz="Europe/Berlin").definition
    assert a.timing != make_schedule("t", "*/5 * * * *", tz="Europe/Berlin").timing
