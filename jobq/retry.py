"""Retry policy: backoff, pure functions of the attempt number and a random source; and a
task's own say on which errors retry and after how long (``@task``'s options)."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobq.errors import HandlerSignal
from jobq.types import MAX_DELAY_SECONDS

log = logging.getLogger("jobq.worker")

#: How many snoozes in a row a task's job may take unless the task says otherwise.
DEFAULT_MAX_SNOOZES = 100
MAX_SNOOZES_LIMIT = 100_000


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (the AWS "full jitter" scheme).

    The ceiling of attempt *n* (1-based) is ``min(cap, base * 2**(n-1))``; the delay is drawn
    uniformly from ``[0, ceiling]`` so that jobs failing together do not retry together.

    >>> Backoff(base=1, cap=60).ceiling(1), Backoff(base=1, cap=60).ceiling(4)
    (1.0, 8.0)
    >>> Backoff(base=1, cap=60).ceiling(30)
    60.0
    >>> Backoff(base=2, cap=10).delay(3, rand=lambda: 0.5)
    4.0
    """

    base: float
    cap: float

    def ceiling(self, attempt: int) -> float:
        exponent = max(attempt - 1, 0)
        # 2**exponent overflows floats for absurd attempt counts; the cap wins long before.
        if exponent > 60:
            return float(self.cap)
        return float(min(self.cap, self.base * (2**exponent)))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt *attempt* before the job may run again."""
        return self.ceiling(attempt) * rand()


@dataclass(frozen=True)
class RetryPolicy:
    """A task's own say on its retries (see ``jobq.registry.task``). Empty: every error retries, with the
    worker's backoff (JOBQ_BACKOFF_BASE_SECONDS, JOBQ_BACKOFF_CAP_SECONDS)."""

    retry_on: tuple[type[Exception], ...] | None = None  # None: every error retries
    discard_on: tuple[type[Exception], ...] = ()
    backoff_base: float | None = None  # None: the worker's
    backoff_cap: float | None = None
    backoff: Callable[[int], float] | None = None
    max_snoozes: int = DEFAULT_MAX_SNOOZES

    def retries(self, exc: BaseException) -> bool:
        """Whether an attempt that raised ``exc`` may be retried (while attempts are left)."""
        if isinstance(exc, self.discard_on):
            return False
        return self.retry_on is None or isinstance(exc, self.retry_on)

    def delay(self, attempt: int, default: Backoff) -> float:
        """Seconds to wait after failed attempt ``attempt``. A ``backoff`` callable that
        raises or answers what is not a number of seconds from 0 to 366 days is logged and
        the default backoff used instead."""
        if self.backoff is not None:
            try:
                seconds = self.backoff(attempt)
                if not isinstance(seconds, bool) and isinstance(seconds, (int, float)) and (
                    0 <= seconds <= MAX_DELAY_SECONDS
                ):
                    return float(seconds)
                why = f"returned {seconds!r}, not seconds from 0 to {MAX_DELAY_SECONDS}"
            except Exception as exc:  # noqa: BLE001 - the task's own code
                why = f"raised {type(exc).__name__}: {exc}"
            log.warning("backoff(%d) %s; using the default backoff", attempt, why)
            return default.delay(attempt)
        if self.backoff_base is None and self.backoff_cap is None:
            return default.delay(attempt)
        return Backoff(default.base if self.backoff_base is None else self.backoff_base,
                       default.cap if self.backoff_cap is None else self.backoff_cap
                       ).delay(attempt)


def _exception_types(option: str, value: Any) -> tuple[type[Exception], ...]:
    """An exception class or an iterable of them, as a tuple (for ``isinstance``)."""
    if isinstance(value, type):
        types: tuple[Any, ...] = (value,)
    else:
        try:
            types = tuple(value)
        except TypeError:
            raise ValueError(f"{option} takes exception classes (one, or a tuple of them), "
                             f"not {value!r}") from None
    for t in types:
        if not (isinstance(t, type) and issubclass(t, Exception)):
            raise ValueError(f"{option} takes exception classes, not {t!r}")
        if issubclass(t, HandlerSignal):
            raise ValueError(f"{option}: {t.__name__} steers the job; it is not an error")
    return types


def retry_policy(
    retry_on: Any, discard_on: Any, backoff_base: Any, backoff_cap: Any, backoff: Any,
    max_snoozes: Any,
) -> RetryPolicy:
    """The task options checked (ValueError naming the option) and gathered."""
    retry = None if retry_on is None else _exception_types("retry_on", retry_on)
    discard = () if discard_on is None else _exception_types("discard_on", discard_on)
    both = sorted(t.__name__ for t in set(retry or ()) & set(discard))
    if both:
        raise ValueError(f"{', '.join(both)}: in both retry_on and discard_on")
    for option, value in (("backoff_base", backoff_base), ("backoff_cap", backoff_cap)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 <= value <= MAX_DELAY_SECONDS
        ):
            raise ValueError(f"{option} must be seconds from 0 to {MAX_DELAY_SECONDS}")
    if backoff_base is not None and backoff_cap is not None and backoff_cap < backoff_base:
        raise ValueError("backoff_cap must be at least backoff_base")
    if backoff is not None:
        if not callable(backoff):
            raise ValueError("backoff must be a callable(attempt) -> seconds")
        if backoff_base is not None or backoff_cap is not None:
            raise ValueError("give backoff, or backoff_base and backoff_cap, not both")
    if isinstance(max_snoozes, bool) or not isinstance(max_snoozes, int) or not (
        0 <= max_snoozes <= MAX_SNOOZES_LIMIT
    ):
        raise ValueError(f"max_snoozes must be an integer from 0 to {MAX_SNOOZES_LIMIT}")
    return RetryPolicy(
        retry_on=retry, discard_on=discard,
        backoff_base=None if backoff_base is None else float(backoff_base),
        backoff_cap=None if backoff_cap is None else float(backoff_cap),
        backoff=backoff, max_snoozes=max_snoozes,
    )
