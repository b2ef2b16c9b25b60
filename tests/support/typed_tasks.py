"""Tasks with typed payloads (tests/api/test_typed_payloads.py): their handlers' payload
parameters are pydantic models, one under a string annotation."""

from __future__ import annotations

from pydantic import BaseModel, Field

from jobq import JobContext, task


class Email(BaseModel):
    to: str
    subject: str = "hello"
    copies: int = Field(1, ge=1, le=10)


class Resize(BaseModel):
    image: str
    width: int


@task("typed_send", max_attempts=2)
def send(payload: Email, ctx: JobContext) -> dict[str, object]:
    return {"model": type(payload).__name__, "to": payload.to, "subject": payload.subject,
            "copies": payload.copies}


@task("typed.resize")
async def resize(payload: Resize) -> str:
    return f"{type(payload).__name__}:{payload.image}@{payload.width}"
