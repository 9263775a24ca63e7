"""Why an app could not start, as one line that names the handler, key or option and says
what to do.

Redis's own words ("WRONGTYPE Operation against a key holding the wrong kind of value",
"HELLO must be called with the client already authenticated...") say what went wrong but not
where or how to fix it; an operator reading a start-up failure needs both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote

import redis.exceptions as rexc

from ._exceptions import AioredqError, ConfigurationError
from ._handlers import Handler, StreamHandler, SubscribeHandler
from ._transports.keys import aux
from ._url import Target

# Redis's answers when a password is missing or wrong (the wording differs with the version
# and with whether HELLO or AUTH was sent first).
_NEEDS_PASSWORD = ("NOAUTH", "Authentication required", "HELLO must be called")
_WRONG_PASSWORD = ("WRONGPASS", "invalid password", "invalid username-password")
_NOPERM_COMMAND = re.compile(r"permissions to run the '([^']+)' command")


def first_error(exc: BaseException) -> BaseException:
    """The error that stopped a task group: the first leaf that is not a cancellation, the
    first one of aioredq's own preferred (it already says which handler and what to do)."""
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, AioredqError):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, Exception):
            return leaf
    return leaves[0] if leaves else exc


def _leaves(exc: BaseException) -> Sequence[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def auth_error(exc: BaseException, target: Target) -> ConfigurationError | None:
    """A ConfigurationError for a missing or wrong password, else None."""
    text = str(exc)
    where = f"Redis at {target.safe_url}"
    if any(marker in text for marker in _WRONG_PASSWORD):
        return ConfigurationError(
            f"{where} refused the user name or password ({_one_line(text)}): fix the password "
            "in the URL (redis://USER:PASSWORD@host:port/db)"
        )
    if any(marker in text for marker in _NEEDS_PASSWORD):
        return ConfigurationError(
            f"{where} needs a password: add it to the URL (redis://:PASSWORD@host:port/db, "
            "or redis://USER:PASSWORD@host:port/db for an ACL user)"
        )
    return None


def refused_at_start(
    exc: Exception, handlers: Sequence[Handler], target: Target, *, started: bool = False
) -> Exception:
    """The error to raise when a consumer of ``handlers`` could not start (or, ``started``,
    stopped on a refusal it cannot retry): a Redis refusal becomes a ConfigurationError
    naming the handlers and what to do; anything else is returned as it is."""
    if isinstance(exc, BaseExceptionGroup):  # from a task group inside the consumer
        leaf = first_error(exc)
        exc = leaf if isinstance(leaf, Exception) else exc
    auth = auth_error(exc, target)
    if auth is not None:
        return auth
    if isinstance(exc, rexc.ResponseError):
        return ConfigurationError(
            refused(
                exc,
                f"{describe(handlers)} {'failed' if started else 'cannot start'}",
                target,
                handlers,
            )
        )
    return exc


def connect_refused(exc: Exception, target: Target) -> Exception:
    """The error for a first command that failed for another reason than an unreachable
    server: a refusal (an ACL user without PING), or a URL value the client cannot use."""
    if isinstance(exc, AioredqError):
        return exc
    if isinstance(exc, rexc.ResponseError):
        return ConfigurationError(
            refused(exc, f"Redis at {target.safe_url} refused the first command", target, [])
        )
    if not isinstance(exc, (ValueError, TypeError, rexc.RedisError)):
        return exc  # not about the URL: a failure of its own, reported as it is
    return ConfigurationError(
        f"cannot use the Redis URL {target.safe_url}: "
        f"{type(exc).__name__}: {_scrub(str(exc), target)}; fix the URL"
    )


def refused(exc: BaseException, what: str, target: Target, handlers: Sequence[Handler]) -> str:
    """One line for a command that Redis refused: ``what`` happened (e.g. "handler 'event'
    cannot start"), Redis's reason, then what to do about it."""
    text = _one_line(str(exc))
    advice = _advice(exc, target, handlers)
    return f"{what}: {type(exc).__name__}: {text}; {advice}"


def _advice(exc: BaseException, target: Target, handlers: Sequence[Handler]) -> str:
    text = str(exc)
    user = _user(target)
    if isinstance(exc, rexc.NoPermissionError) or text.startswith("NOPERM"):
        command = _NOPERM_COMMAND.search(text)
        if command:
            return f"grant the command to the Redis user: ACL SETUSER {user} +{command.group(1)}"
        if "channels" in text:
            channels = " ".join(f"&{c}" for h in handlers for c in _channels(h))
            return f"grant the channels to the Redis user: ACL SETUSER {user} {channels}"
        keys = " ".join(f"~{k}" for h in handlers for k in _key_patterns(h))
        return f"grant the keys to the Redis user: ACL SETUSER {user} {keys}"
    if "WRONGTYPE" in text:
        keys = " or ".join(f"{h.key!r} is not a {_kind_of_key(h)}" for h in handlers)
        return f"the key {keys}: delete or rename that key, or give the handler another name"
    if text.startswith("OOM"):
        return "Redis is out of memory (maxmemory): free memory or raise the limit"
    return "fix the cause above and start again"


def describe(handlers: Sequence[Handler]) -> str:
    """``handler 'event' (stream 'cli-events', group 'cli-group')`` and the like."""
    parts = []
    for h in handlers:
        if isinstance(h, SubscribeHandler):
            where = f"channels {', '.join(map(repr, _channels(h)))}"
        elif isinstance(h, StreamHandler):
            group = f", group {h.spec.group!r}" if h.spec.group is not None else ""
            where = f"stream {h.key!r}{group}"
        else:
            where = f"queue {h.key!r}"
        parts.append(f"{h.name!r} ({where})")
    noun = "handler" if len(parts) == 1 else "handlers"
    return f"{noun} {', '.join(parts)}"


def _kind_of_key(handler: Handler) -> str:
    return "stream" if isinstance(handler, StreamHandler) else "list"


def _channels(handler: Handler) -> list[str]:
    if isinstance(handler, SubscribeHandler):
        if handler.spec.pattern is not None:
            return [handler.spec.pattern]
        return list(handler.spec.channels)
    return []


def _key_patterns(handler: Handler) -> list[str]:
    if isinstance(handler, SubscribeHandler):
        return []
    return [handler.key, aux(handler.key, "*")]


def _user(target: Target) -> str:
    return target.username or "default"


def _scrub(text: str, target: Target) -> str:
    """``text`` without the URL's passwords, should an error message quote one."""
    secrets = {target.password, target.sentinel_password} - {None, ""}
    for secret in secrets | {quote(s, safe="") for s in secrets if s}:
        assert secret is not None
        text = text.replace(secret, "***")
    return _one_line(text)


def _one_line(text: str) -> str:
    return " ".join(text.split())
