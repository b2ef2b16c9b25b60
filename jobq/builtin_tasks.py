"""Tasks that every jobq installation has: the brief's ``test`` and a few for trying things."""

from __future__ import annotations

import asyncio
from typing import Any

from jobq import webhooks
from jobq.registry import JobContext, task


class DemoFailure(RuntimeError):
    """Raised on purpose by the demo tasks."""


@task("test")
def test_task(payload: Any, ctx: JobContext) -> Any:
    """The brief's task: the first attempt fails, the next succeeds."""
    if ctx.attempt == 1:
        raise DemoFailure("simulated failure on the first attempt")
    return {"processed": payload, "attempt": ctx.attempt}


@task("echo")
def echo(payload: Any) -> Any:
    """Returns its payload."""
    return payload


@task("sleep")
async def sleep(payload: Any) -> Any:
    """Sleeps for ``payload`` seconds (a number, or {"seconds": n})."""
    seconds = payload.get("seconds") if isinstance(payload, dict) else payload
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise ValueError("sleep needs a number of seconds as its payload") from None
    await asyncio.sleep(max(seconds, 0.0))
    return {"slept": seconds}


@task("fail")
def fail(payload: Any) -> Any:
    """Always fails."""
    raise DemoFailure(f"this task always fails (payload: {payload!r})")


@task("noop")
async def noop(payload: Any) -> None:
    """Does nothing (on the event loop: a no-op needs no thread)."""
    return None


@task(webhooks.TASK_NAME, max_attempts=webhooks.DEFAULT_MAX_ATTEMPTS,
      discard_on=webhooks.WebhookUndeliverable, backoff=webhooks.backoff,
      timeout_seconds=300)
async def webhook(payload: Any, ctx: JobContext) -> Any:
    """Delivers a completion webhook (jobq.webhooks): enqueued by jobq when a job with a
    ``callback_url`` becomes final. Its backoff and timeout are JOBQ_WEBHOOK_*'s."""
    return await webhooks.deliver(payload, ctx)
