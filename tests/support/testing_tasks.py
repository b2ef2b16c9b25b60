"""Tasks for tests/unit/test_testing.py: what an application's task module does."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import jobq
from jobq import JobContext, task


class Signup(BaseModel):
    email: str


@task("t_welcome")
def welcome(payload: Signup) -> dict[str, object]:
    return {"sent_to": payload.email}


@task("t_flaky", max_attempts=5)
def flaky(payload: dict[str, int], ctx: JobContext) -> int:
    if ctx.attempt <= payload["fail_times"]:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return ctx.attempt


@task("t_broken", max_attempts=3)
def broken(payload: object) -> None:
    raise ValueError("always")


@task("t_later")
def later(payload: object) -> None:
    raise jobq.Snooze(3600)


@task("t_refuse")
def refuse(payload: object) -> None:
    raise jobq.Cancel("not for us")


@task("t_fan_out")
def fan_out(payload: int) -> int:
    # Enqueues follow-up jobs, as handlers do; the drain runs them too.
    with jobq.connect(tasks=["testing_tasks"]) as q:
        for i in range(payload):
            q.enqueue("t_welcome", {"email": f"user{i}@example.com"})
    return payload


@task("t_hang")
async def hang(payload: object) -> None:
    await asyncio.sleep(3600)
