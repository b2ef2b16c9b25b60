"""Domain errors. Driver errors are translated into these at the store boundary."""

from __future__ import annotations


class JobqError(Exception):
    """Base of every error jobq raises on purpose."""

    #: For an error about one item of a batch (``enqueue_many``, ``POST /jobs/batch``): the
    #: item's position in the batch, from 0; None otherwise.
    index: int | None = None


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
    """The idempotency key was used before with a different request.

    Keys are unique within a queue, so the job that holds the key is always in the queue the
    new job asked for. ``job_id`` names it; None when the holder is an earlier item of the
    same batch (see ``within_batch``).
    """

    def __init__(self, key: str, job_id: int | None, *, index: int | None = None) -> None:
        super().__init__(
            f"idempotency_key {key!r} was already used by job {job_id} with a different request"
        )
        self.key = key
        self.job_id = job_id
        self.index = index

    @classmethod
    def within_batch(cls, key: str, index: int, first: int) -> IdempotencyConflict:
        """Items ``first`` and ``index`` of one batch carry ``key`` with different requests."""
        exc = cls.__new__(cls)
        JobqError.__init__(
            exc, f"idempotency_key {key!r} is given to items {first} and {index} of the batch "
            "with different requests",
        )
        exc.key, exc.job_id, exc.index = key, None, index
        return exc


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


# -- Raised by handlers to steer their job ----------------------------------------------------


class HandlerSignal(Exception):
    """Raised by a handler to say what becomes of its job, rather than that it went wrong.

    Plain exceptions (not BaseException), so the worker's threads hand them over like any
    other; a handler's own ``except Exception:`` catches them too, so re-raise them there.
    Not subject to a task's ``retry_on`` or ``discard_on``.
    """


class Snooze(HandlerSignal):
    """``raise jobq.Snooze(seconds)``: run the job again after ``seconds`` (0 to 366 days)
    without charging this attempt: ``ctx.attempt`` is the same number next time. The
    attempt is logged as ``released`` with the error ``snoozed: ...``. Snoozes do not count
    against ``max_attempts``; the task's ``max_snoozes`` (default 100) bounds how many come
    in a row, and the one past it fails the job."""

    def __init__(self, seconds: float) -> None:
        # Imported here: types imports this module.
        from jobq.types import MAX_DELAY_SECONDS

        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            0 <= seconds <= MAX_DELAY_SECONDS  # also refuses NaN
        ):
            raise ValueError(f"Snooze: seconds must be a number from 0 to {MAX_DELAY_SECONDS}, "
                             f"not {seconds!r}")
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = float(seconds)


class Cancel(HandlerSignal):
    """``raise jobq.Cancel(reason)``: end the job now as ``cancelled``, attempts left or not;
    ``reason`` becomes its ``last_error`` and its attempt is logged as ``cancelled``. A
    manual retry runs it again, like any cancelled job."""

    def __init__(self, reason: str = "cancelled by its handler") -> None:
        if not isinstance(reason, str):
            raise TypeError(f"Cancel: reason must be a string, not {type(reason).__name__}")
        super().__init__(reason)
        self.reason = reason


class JobTimeout(Exception):
    """What a task's ``retry_on``/``discard_on`` see of an attempt that ran past its timeout:
    ``discard_on=[jobq.JobTimeout]`` fails such a job at once; with a ``retry_on`` list, a
    timeout retries only when this is in it. Never raised into the handler."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the attempt ran past its timeout of {seconds:g}s")
        self.seconds = seconds


# -- API keys ---------------------------------------------------------------------------------


class Unauthorized(JobqError):
    """No API key, or one that is unknown, malformed or revoked (HTTP 401)."""

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        super().__init__(message)
        #: A token was given but is not valid (RFC 6750 ``error="invalid_token"``).
        self.invalid_token = invalid_token


class Forbidden(JobqError):
    """The caller is known but may not do this (HTTP 403)."""

    def __init__(self, message: str, *, required_scope: str | None = None) -> None:
        super().__init__(message)
        self.required_scope = required_scope


class RateLimited(JobqError):
    """The key used up its request budget, or the client address its budget of failed
    authentications (``what`` says which); retry after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, retry_after: int, what: str = "requests for this API key") -> None:
        super().__init__(f"too many {what}; retry after {retry_after} s")
        self.retry_after = retry_after


class QueueNotFound(JobqError):
    """A queue the caller's key does not cover: for that key it does not exist (HTTP 404)."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue!r} does not exist for this API key")
        self.queue = queue


class KeyNotFound(JobqError):
    def __init__(self, prefix: str) -> None:
        super().__init__(f"no API key with prefix {prefix!r}")
        self.prefix = prefix


class InvalidKeySpec(JobqError, ValueError):
    """An API key that jobq will not create; the message says why."""
