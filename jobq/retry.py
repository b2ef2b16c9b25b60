"""Backoff policy: pure functions of the attempt number and a random source."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


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
