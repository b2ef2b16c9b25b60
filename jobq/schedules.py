"""Periodic jobs: what a schedule is, and when its ticks fall. Pure: no database, no clock.

A schedule is declared in a task module, with ``@task(..., schedule=...)`` or
``jobq.schedule(...)``, and checked there: a bad cron expression, time zone or interval
stops the program at start with a message naming the schedule. Workers put the declared
schedules in the database and enqueue each tick's job there (``store/schedules.py``,
``worker/scheduler.py``); this module only says which instants are ticks.

A **tick** is an instant, in UTC. Its job's idempotency key is ``schedule:<name>:<tick in
ISO 8601, UTC>``, unique in the schedule's queue, so a tick is enqueued at most once however
many workers try.

- Cron expressions (five fields, as Debian's cron reads them, via cronsim) are evaluated in
  the schedule's time zone (UTC unless ``tz`` says otherwise), DST included: a time of day
  that does not exist on the day the clocks go forward (``30 2 * * *`` in Europe/Berlin)
  runs at the first minute that does (03:00); one that exists twice when they go back runs
  once, at the first. Expressions with a ``*`` in the minute or hour field (``*/5 * * * *``)
  step through real time, so they run in both copies of a repeated hour.
- Intervals (``timedelta(seconds=30)``) are real time, anchored at the Unix epoch: every 30
  s from 00:00:00 UTC, every hour on the hour (UTC), every day at midnight UTC. So every
  worker computes the same ticks, and a restart does not move them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from jobq.jsonvalue import check_json_value
from jobq.types import NAME_PATTERN, NewJob

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_NAME = re.compile(NAME_PATTERN)

#: Default ``grace``: a tick younger than this is late, not missed (see ``Schedule.due``).
DEFAULT_GRACE = timedelta(seconds=60)
#: The shortest interval: a worker's scheduler looks about once a second.
MIN_INTERVAL = timedelta(seconds=1)
#: Most ticks of one schedule enqueued in one transaction; a catch-up of more goes on in the
#: next pass, at once.
MAX_TICKS_PER_PASS = 100
#: The "next run" of an expression that matches no time in the next 50 years.
NEVER = datetime(9999, 1, 1, tzinfo=UTC)


class InvalidSchedule(ValueError):
    """A schedule that cannot be: a bad cron expression, zone, interval or name."""


@dataclass(frozen=True)
class Schedule:
    """One declared schedule. Made by ``make_schedule``, which checks it."""

    name: str
    task_type: str
    cron: str | None  # five cron fields, or None for an interval
    interval: timedelta | None
    tz: str | None  # an IANA zone for the cron expression; None: UTC
    payload: Any = None
    queue: str = "default"
    catch_up: bool = False
    grace: timedelta = DEFAULT_GRACE
    #: Attempts per job; the worker sets the task's or JOBQ_MAX_ATTEMPTS before declaring.
    max_attempts: int | None = None

    @property
    def expression(self) -> str:
        """How the schedule reads: its cron expression, or ``every 30s``."""
        if self.cron is not None:
            return self.cron
        assert self.interval is not None
        return f"every {_seconds_text(self.interval)}"

    @property
    def definition(self) -> str:
        """A digest of everything that decides the schedule's jobs and their times: the
        database compares it to tell a changed schedule from the same one."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    @property
    def timing(self) -> tuple[str, str | None]:
        """What decides when ticks fall (a change of it starts the schedule afresh)."""
        return self.expression, self.tz

    def describe(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type, "expression": self.expression, "tz": self.tz,
            "payload": self.payload, "queue": self.queue, "catch_up": self.catch_up,
            "grace_seconds": self.grace.total_seconds(), "max_attempts": self.max_attempts,
        }

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t`` (an aware datetime), in UTC."""
        if self.interval is not None:
            step = self.interval // _US
            since = (t - EPOCH) // _US
            return EPOCH + (since // step + 1) * step * _US
        assert self.cron is not None
        zone = ZoneInfo(self.tz) if self.tz else UTC
        it = CronSim(self.cron, t.astimezone(zone))
        try:
            tick = next(it).astimezone(UTC)
            # cronsim steps through wall-clock time for fixed times of day; started in the
            # second copy of a repeated hour it can name the first copy, which is earlier.
            while tick <= t:
                tick = next(it).astimezone(UTC)
        except StopIteration:  # no match within cronsim's horizon (50 years)
            return NEVER
        return tick

    def ticks(self, start: datetime, until: datetime) -> Iterator[datetime]:
        """The ticks from ``start`` (itself included when it is one) to ``until``, inclusive."""
        t = self.next_after(start - _US)
        while t <= until:
            yield t
            t = self.next_after(t)

    def due(self, next_run_at: datetime, now: datetime) -> tuple[list[datetime], bool]:
        """Which ticks to enqueue now, of those from ``next_run_at`` (the first not yet
        handled) to ``now``; and whether some were skipped as missed.

        With ``catch_up``: every one, oldest first, at most MAX_TICKS_PER_PASS (the caller
        goes on from the last). Without: those no older than ``grace`` (a scheduler that
        was a little late leaves no gap); older ones were missed, and are skipped. A worker
        fleet that was down over many ticks so enqueues at most a grace's worth (at most the
        latest tick, for a schedule slower than its grace), not every tick it missed.
        """
        start = next_run_at if self.catch_up else max(next_run_at, now - self.grace)
        ticks = []
        for t in self.ticks(start, now):
            ticks.append(t)
            if len(ticks) == MAX_TICKS_PER_PASS:
                break
        # ``next_run_at`` is a tick: older than the grace, it and those after it were missed.
        return ticks, not self.catch_up and next_run_at < now - self.grace

    def job_key(self, tick: datetime) -> str:
        """The idempotency key of the tick's job: the tick's identity in the database."""
        return f"schedule:{self.name}:{tick.astimezone(UTC).isoformat()}"

    def new_job(self, tick: datetime) -> NewJob:
        return NewJob(
            task_type=self.task_type, payload=self.payload, queue=self.queue,
            max_attempts=self.max_attempts or NewJob.max_attempts,
            idempotency_key=self.job_key(tick),
        )


def make_schedule(
    task_type: str,
    cron_or_interval: str | timedelta | float,
    *,
    name: str | None = None,
    tz: str | None = None,
    payload: Any = None,
    queue: str = "default",
    catch_up: bool = False,
    grace: timedelta | float | None = None,
) -> Schedule:
    """A checked Schedule; InvalidSchedule naming the schedule and what is wrong with it.

    ``cron_or_interval``: a cron expression (``"*/5 * * * *"``), or an interval as a
    timedelta or a number of seconds (at least 1 s).
    """
    label = name or task_type
    where = f"schedule {label!r}"
    if not isinstance(label, str) or not _NAME.fullmatch(label):
        raise InvalidSchedule(f"{where}: the name must match {NAME_PATTERN}")
    if not isinstance(queue, str) or not _NAME.fullmatch(queue):
        raise InvalidSchedule(f"{where}: the queue must match {NAME_PATTERN}")
    cron: str | None = None
    interval: timedelta | None = None
    if isinstance(cron_or_interval, str):
        cron = " ".join(cron_or_interval.split())
        try:
            CronSim(cron, datetime.now(UTC))
        except CronSimError as exc:
            raise InvalidSchedule(f"{where}: bad cron expression {cron_or_interval!r}: {exc} "
                             "(five fields: minute hour day-of-month month day-of-week)") from None
    else:
        interval = _interval(where, cron_or_interval)
        if tz is not None:
            raise InvalidSchedule(f"{where}: a time zone applies to cron expressions only "
                             "(an interval is real time)")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidSchedule(f"{where}: unknown time zone {tz!r} (an IANA name such as "
                             "'Europe/Berlin')") from None
    try:
        check_json_value(payload)
    except ValueError as exc:
        raise InvalidSchedule(f"{where}: the payload {exc}") from None
    if not isinstance(catch_up, bool):
        raise InvalidSchedule(f"{where}: catch_up must be True or False")
    return Schedule(
        name=label, task_type=task_type, cron=cron, interval=interval, tz=tz,
        payload=payload, queue=queue, catch_up=catch_up,
        grace=DEFAULT_GRACE if grace is None else _interval(f"{where}: grace", grace, 0),
    )


def _interval(where: str, value: object, minimum: float = 1.0) -> timedelta:
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        delta = timedelta(seconds=value)
    else:
        raise InvalidSchedule(f"{where}: give a cron expression (a string) or an interval "
                         f"(a timedelta or seconds), not {value!r}")
    if delta < timedelta(seconds=minimum) or delta > timedelta(days=366):
        raise InvalidSchedule(f"{where}: an interval from {minimum:g} s to 366 days, not {delta}")
    return delta


def _seconds_text(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    return f"{seconds:g}s" if seconds != int(seconds) else f"{int(seconds)}s"


def schedule(
    task_type: str,
    cron_or_interval: str | timedelta | float,
    *,
    payload: Any = None,
    name: str | None = None,
    tz: str | None = None,
    queue: str = "default",
    catch_up: bool = False,
    grace: timedelta | float | None = None,
) -> Schedule:
    """Declare a periodic job, at module level in a task module (like ``@task``)::

        jobq.schedule("report", "0 9 * * MON-FRI", tz="Europe/Berlin", payload={"kind": "daily"},
                      name="report-daily")
        jobq.schedule("poll", timedelta(seconds=30))

    ``name`` (default: the task's name) identifies the schedule in the database; two
    schedules of one task need names of their own. ``catch_up=True`` enqueues every tick
    that the workers missed while they were away; by default ticks older than ``grace``
    (60 s) are skipped. Raises InvalidSchedule (a ValueError) for a bad expression, zone,
    interval or name.
    """
    from jobq.registry import default_registry  # the registry imports this module

    made = make_schedule(task_type, cron_or_interval, name=name, tz=tz, payload=payload,
                         queue=queue, catch_up=catch_up, grace=grace)
    default_registry.add_schedule(made)
    return made


@dataclass(frozen=True)
class ScheduleState:
    """A schedule as the database holds it (``GET /schedules``, ``jobq schedules``)."""

    name: str
    task_type: str
    queue: str
    expression: str
    tz: str | None
    payload: Any
    catch_up: bool
    next_run_at: datetime
    last_run_at: datetime | None  # the tick of the last job enqueued
    last_job_id: int | None
    created_at: datetime
    declared_at: datetime  # when a worker last declared it: stale once no code declares it


@dataclass(frozen=True)
class Fired:
    """A tick handled by a scheduler pass: its job, made now (``created``) or found (its
    key was taken already: the tick had been enqueued)."""

    schedule: str
    tick: datetime
    job_id: int | None
    created: bool


@dataclass(frozen=True)
class Pass:
    """What one scheduler pass did, and when the next is due."""

    fired: list[Fired]
    #: Schedules whose ticks older than their grace were skipped, each with the first of them.
    missed: list[tuple[str, datetime]]
    #: The earliest next tick among the caller's schedules (None: it declares none that the
    #: database holds as it does).
    next_run_at: datetime | None
    now: datetime
    #: A schedule had more due ticks than one pass takes (catch-up): go on at once.
    more: bool = False
