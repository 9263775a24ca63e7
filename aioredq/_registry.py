"""The handler registry: declaring handlers, finding them, refusing combinations that clash."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, cast

from ._backoff import Backoff
from ._exceptions import ConfigurationError
from ._handlers import (
    Handler,
    HandlerFunc,
    Producing,
    StreamHandler,
    SubscribeHandler,
    TaskHandler,
    stream_spec,
    subscribe_spec,
    task_spec,
)
from ._options import (
    DEFAULT_BACKOFF,
    STREAM_OPTIONS,
    SUBSCRIBE_OPTIONS,
    TASK_OPTIONS,
    defaults,
)
from ._rate import Rate
from ._stats import Counters

H = TypeVar("H", bound=Handler)


class Registry:
    """The handlers an app declares, with their counters; ``@app.task``, ``@app.stream`` and
    ``@app.subscribe`` add to it until the app starts."""

    handlers: list[Handler]
    _counters: dict[str, Counters]
    _serving: asyncio.Task[None] | None

    def __init__(self) -> None:
        self.handlers = []
        self._counters = {}
        self._serving = None

    # declaring handlers --------------------------------------------------------------------
    def task(
        self,
        queue: str,
        *,
        concurrency: int = 16,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        lease: float = 30.0,
        batch: int = 100,
        cron: str | None = None,
        tz: str = "UTC",
        every: float | None = None,
        rate: str | Rate | None = None,
        timeout: float | None = None,
        result_ttl: float | None = None,
        result_type: Any = None,
    ) -> Callable[[HandlerFunc], TaskHandler]:
        """Consume the reliable list queue ``queue`` (at-least-once).

        ``cron`` (five fields, or six with seconds first, in time zone ``tz``) or ``every``
        (seconds) also enqueue one job per tick, whose body is the tick's scheduled time,
        however many apps run the handler."""
        _named("task", "queue", queue)

        def decorate(func: HandlerFunc) -> TaskHandler:
            return self.add_task(
                func,
                queue,
                concurrency=concurrency,
                max_attempts=max_attempts,
                backoff=backoff,
                lease=lease,
                batch=batch,
                cron=cron,
                tz=tz,
                every=every,
                rate=rate,
                timeout=timeout,
                result_ttl=result_ttl,
                result_type=result_type,
            )

        return decorate

    def add_task(self, func: HandlerFunc, queue: str, **options: Any) -> TaskHandler:
        where = f"handler {getattr(func, '__name__', func)!r}"
        spec = task_spec(queue, where=where, **{**_TASK_DEFAULTS, **options})
        return self._add(TaskHandler(self._producing(), func, spec, spec.queue))

    def stream(
        self,
        stream: str,
        *,
        group: str | None = None,
        concurrency: int = 16,
        max_deliveries: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        lease: float = 30.0,
        maxlen: int | None = None,
        start: Literal["latest", "earliest"] = "latest",
        lag_warning: int = 1000,
        batch: int = 100,
        max_age: float | None = None,
        rate: str | Rate | None = None,
        timeout: float | None = None,
    ) -> Callable[[HandlerFunc], StreamHandler]:
        """Consume the stream ``stream``: in consumer group ``group`` (at-least-once, acked,
        claimed, dead-lettered), or without a group as a tail of new entries.

        ``maxlen`` and ``max_age`` (seconds) bound what the stream keeps: every append made
        through the app trims with ``MAXLEN ~`` / ``MINID ~``."""
        _named("stream", "stream", stream)

        def decorate(func: HandlerFunc) -> StreamHandler:
            return self.add_stream(
                func,
                stream,
                group=group,
                concurrency=concurrency,
                max_deliveries=max_deliveries,
                backoff=backoff,
                lease=lease,
                maxlen=maxlen,
                start=start,
                lag_warning=lag_warning,
                batch=batch,
                max_age=max_age,
                rate=rate,
                timeout=timeout,
            )

        return decorate

    def add_stream(self, func: HandlerFunc, stream: str, **options: Any) -> StreamHandler:
        where = f"handler {getattr(func, '__name__', func)!r}"
        spec = stream_spec(stream, where=where, **{**_STREAM_DEFAULTS, **options})
        return self._add(StreamHandler(self._producing(), func, spec, spec.stream))

    def subscribe(
        self,
        *channels: str,
        pattern: str | None = None,
        sharded: bool = False,
        buffer: int = 1000,
        concurrency: int = 1,
        timeout: float | None = None,
    ) -> Callable[[HandlerFunc], SubscribeHandler]:
        """Receive what is published on ``channels`` (or ``pattern``); at-most-once."""
        if channels:
            _named("subscribe", "channel", channels[0])

        def decorate(func: HandlerFunc) -> SubscribeHandler:
            return self.add_subscribe(
                func,
                *channels,
                pattern=pattern,
                sharded=sharded,
                buffer=buffer,
                concurrency=concurrency,
                timeout=timeout,
            )

        return decorate

    def add_subscribe(self, func: HandlerFunc, *channels: str, **options: Any) -> SubscribeHandler:
        where = f"handler {getattr(func, '__name__', func)!r}"
        spec = subscribe_spec(channels, where=where, **{**_SUBSCRIBE_DEFAULTS, **options})
        key = spec.pattern if spec.pattern is not None else ",".join(spec.channels)
        return self._add(SubscribeHandler(self._producing(), func, spec, key))

    def _producing(self) -> Producing:
        # The registry is always part of an App, which produces: handlers send through it.
        return cast("Producing", self)

    def _add(self, handler: H) -> H:
        if self._serving is not None:
            raise ConfigurationError("handlers must be declared before the app starts")
        for other in self.handlers:
            if other.name == handler.name:
                raise ConfigurationError(
                    f"two handlers are named {handler.name!r}; give the functions distinct names"
                )
            if {other.kind, handler.kind} == {"task", "stream"} and other.key == handler.key:
                raise ConfigurationError(
                    f"{handler.key!r} cannot be both a task queue (a list) and a stream: "
                    f"rename the queue of {other.name if other.kind == 'task' else handler.name!r}"
                )
            if (
                other.kind == handler.kind != "subscribe"
                and other.key == handler.key
                and getattr(other.spec, "group", None) == getattr(handler.spec, "group", None)
                and other.body_type != handler.body_type
            ):
                raise ConfigurationError(
                    f"handlers {other.name!r} and {handler.name!r} consume {handler.key!r} "
                    f"with different body types ({other.body_type!r} vs {handler.body_type!r})"
                )
        self.handlers.append(handler)
        self._counters[handler.name] = Counters()
        return handler

    def handler(self, name: str) -> Handler:
        """The handler named ``name`` (the function's name), or the first on key ``name``."""
        for handler in self.handlers:
            if handler.name == name:
                return handler
        for handler in self.handlers:
            if handler.key == name:
                return handler
        known = ", ".join(h.name for h in self.handlers) or "none"
        raise KeyError(f"no handler or key named {name!r} (handlers: {known})")

    def _select(self, only: Sequence[str] | None) -> list[Handler]:
        if not only:
            return list(self.handlers)
        selected = []
        for name in only:
            matches = [h for h in self.handlers if name in (h.name, h.key)]
            if not matches:
                known = ", ".join(h.name for h in self.handlers) or "none"
                raise ConfigurationError(f"no handler named {name!r} (handlers: {known})")
            selected += [h for h in matches if h not in selected]
        return selected


def _named(decorator: str, what: str, name: object) -> None:
    """``@app.task`` without parentheses hands the function over as the queue name, and the
    function would silently be replaced by the inner decorator: say so at import time."""
    if callable(name):
        func = getattr(name, "__name__", "handler")
        raise ConfigurationError(
            f"@app.{decorator} needs the {what} name in parentheses: "
            f'write @app.{decorator}("{func}") above {func!r}, not @app.{decorator}'
        )


_TASK_DEFAULTS = defaults(TASK_OPTIONS)
_STREAM_DEFAULTS = defaults(STREAM_OPTIONS)
_SUBSCRIBE_DEFAULTS = defaults(SUBSCRIBE_OPTIONS)
