"""aioredq: asyncio messaging over Redis: pub/sub, reliable task queues and streams."""

from __future__ import annotations

from ._app import App
from ._backoff import Backoff
from ._exceptions import (
    AioredqError,
    Cancelled,
    ConfigurationError,
    ConnectError,
    HandlerTimeout,
    InvalidBody,
    JobFailed,
    MessageTooLarge,
    RateLimited,
    RedisCommandError,
    Reject,
    Retry,
)
from ._handlers import Handler, StreamHandler, SubscribeHandler, TaskHandler
from ._logging import install as _install_log_escaping
from ._message import Message
from ._rate import Rate
from ._stats import HandlerStats, Latency, Stats

__version__ = "0.1.0"

_install_log_escaping()  # foreign text (message ids, keys, errors) cannot forge log lines

__all__ = [
    "AioredqError",
    "App",
    "Backoff",
    "Cancelled",
    "ConfigurationError",
    "ConnectError",
    "Handler",
    "HandlerStats",
    "HandlerTimeout",
    "InvalidBody",
    "JobFailed",
    "Latency",
    "Message",
    "MessageTooLarge",
    "Rate",
    "RateLimited",
    "RedisCommandError",
    "Reject",
    "Retry",
    "Stats",
    "StreamHandler",
    "SubscribeHandler",
    "TaskHandler",
    "__version__",
]
