"""Every exception aioredq raises, in one tree.

    AioredqError
    ├── ConfigurationError     a handler or option is wrong (raised at decoration/start time)
    ├── ConnectError           Redis cannot be reached (start-up, producing)
    ├── RedisCommandError      Redis answered with an error; the redis-py error is chained
    ├── MessageTooLarge        a body over ``max_body_bytes`` was produced
    ├── InvalidBody            a handler-bound ``enqueue``/``append``/``publish`` got a body
    │                          its handler would refuse (also a ValueError)
    ├── HandlerTimeout         a handler ran past its ``timeout=`` (the delivery's error)
    ├── Cancelled              the job was cancelled with ``app.cancel`` (its error)
    └── JobFailed              ``app.result``: the job was dead-lettered (``.error`` says why)

Handler control flow (raised *by* handlers, caught by the worker):

    Retry(delay=None)          run the message again after ``delay`` seconds (or the backoff)
    Reject(reason)             dead-letter the message now
"""

from __future__ import annotations

import math


class AioredqError(Exception):
    """Base class of every error aioredq raises."""


class ConfigurationError(AioredqError):
    """A handler, option or URL is invalid; raised when it is declared, not when it runs."""


class ConnectError(AioredqError):
    """Redis could not be reached."""


class RedisCommandError(AioredqError):
    """Redis answered a command with an error."""


class MessageTooLarge(AioredqError):
    """A produced body is larger than the app's ``max_body_bytes``."""


class InvalidBody(AioredqError, ValueError):
    """A body produced through a handler (``send_email.enqueue(...)``) does not validate
    against that handler's annotation; nothing was sent."""


class HandlerTimeout(AioredqError):
    """A handler call ran longer than its ``timeout=``: it was cancelled, and the delivery
    counts as a failure (retried with backoff, then dead-lettered)."""


class Cancelled(AioredqError):
    """The job was cancelled by ``app.cancel``: settled as dead, never retried."""


class JobFailed(AioredqError):
    """``app.result`` / ``app.request``: the job was dead-lettered. ``error`` is its dead
    letter's error text (``"Type: message"``)."""

    def __init__(self, job_id: str, error: str) -> None:
        super().__init__(f"job {job_id!r} failed: {error}")
        self.id = job_id
        self.error = error


class Retry(Exception):
    """Raise from a handler to run the message again after ``delay`` seconds.

    Without a delay the handler's backoff decides. Attempts are still counted: once they run
    out the message is dead-lettered.
    """

    def __init__(self, delay: float | None = None) -> None:
        if delay is not None and not (isinstance(delay, (int, float)) and 0 <= delay < math.inf):
            raise ValueError(f"Retry delay must be a finite number >= 0, got {delay!r}")
        super().__init__(f"retry requested (delay={delay})")
        self.delay = delay


class Reject(Exception):
    """Raise from a handler to dead-letter the message now, with ``reason``."""

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason


class UsageError(Exception):
    """Bad command-line input: one line on stderr, exit 2. Raised by the commands' modules
    (``inspect``, ``dead``) as well as by the CLI's parser, hence defined down here."""


class RateLimited(Exception):
    """Raise from a handler (say after an HTTP 429) to put the message back without counting
    an attempt and pause its whole queue or group, for every worker, for ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        if not (isinstance(delay, (int, float)) and 0 < delay < math.inf):
            raise ValueError(f"RateLimited delay must be a finite number > 0, got {delay!r}")
        super().__init__(f"rate limited for {delay} s")
        self.delay = float(delay)
