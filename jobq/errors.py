"""Domain errors. Driver errors are translated into these at the store boundary."""

from __future__ import annotations


class JobqError(Exception):
    """Base of every error jobq raises on purpose."""


class ConfigError(JobqError):
    """A setting is missing or invalid; the message names it."""


class JobNotFound(JobqError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class UnknownTask(JobqError):
    def __init__(self, task_type: str, known: list[str]) -> None:
        super().__init__(
            f"unknown task_type {task_type!r}; known task types: {', '.join(sorted(known))}"
        )
        self.task_type = task_type
        self.known = sorted(known)


class IdempotencyConflict(JobqError):
    """The idempotency key was used before with a different request."""

    def __init__(self, key: str, job_id: int) -> None:
        super().__init__(
            f"idempotency_key {key!r} was already used by job {job_id} with a different request"
        )
        self.key = key
        self.job_id = job_id


class InvalidTransition(JobqError):
    """The job is not in a state that allows the requested change."""

    def __init__(self, job_id: int, state: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id}: it is {state}")
        self.job_id = job_id
        self.state = state
        self.action = action


class InvalidJob(JobqError, ValueError):
    """A job that jobq will not store; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class InvalidCursor(JobqError):
    """A list cursor that jobq did not hand out."""


class StoreUnavailable(JobqError):
    """The database could not be reached or is overloaded; try again later."""
