"""Handlers: the user's function plus one small frozen spec per kind, checked when declared."""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from ._backoff import Backoff
from ._codec import (
    Codec,
    DecodeError,
    decode_fields_raw,
    encode_body,
    encode_envelope,
    encode_fields,
    parse_task_item,
)
from ._cron import check_schedule
from ._exceptions import ConfigurationError, InvalidBody
from ._message import Kind, Message
from ._rate import Rate, parse_rate

HandlerFunc = Callable[..., Awaitable[Any]]


class Producing(Protocol):
    """What a handler needs of its app to send to its own key (``App`` is one)."""

    max_body_bytes: int

    @property
    def middleware(self) -> Sequence[Any]:
        """Around every handler call, first = outermost (read when a consumer starts)."""

    async def enqueue(
        self,
        queue: str,
        body: Any,
        *,
        delay: float = ...,
        at: datetime | None = ...,
        headers: dict[str, str] | None = ...,
    ) -> str: ...

    async def enqueue_many(
        self, queue: str, bodies: Iterable[Any], *, delay: float = ..., at: datetime | None = ...
    ) -> list[str]: ...

    async def append(self, stream: str, body: Any, *, maxlen: int | None = ...) -> str: ...

    async def result(
        self, queue: str, id: str, *, timeout: float | None = ..., result_type: Any = ...
    ) -> Any: ...

    async def request(
        self, queue: str, body: Any, *, timeout: float | None = ..., result_type: Any = ...
    ) -> Any: ...

    async def cancel(self, queue: str, id: str) -> bool: ...

    async def append_many(
        self, stream: str, bodies: Iterable[Any], *, maxlen: int | None = ...
    ) -> list[str]: ...

    async def publish(self, channel: str, body: Any, *, sharded: bool = ...) -> int: ...

    async def publish_many(
        self, channel: str, bodies: Iterable[Any], *, sharded: bool = ...
    ) -> int: ...


def _positive_int(value: object, what: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{where}: {what} must be an integer >= 1, got {value!r}")
    return value


def _positive_float(value: object, what: str, where: str) -> float:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{where}: {what} must be a finite number > 0, got {value!r}")
    return float(value)


def _optional_seconds(value: object, what: str, where: str) -> float | None:
    return None if value is None else _positive_float(value, what, where)


def _key_name(value: object, what: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class TaskSpec:
    queue: str
    concurrency: int
    max_attempts: int
    backoff: Backoff
    lease: float
    batch: int
    cron: str | None = None
    tz: str = "UTC"
    every: float | None = None
    rate: Rate | None = None
    timeout: float | None = None
    result_ttl: float | None = None
    result_type: Any = None


@dataclass(frozen=True, slots=True)
class StreamSpec:
    stream: str
    group: str | None
    concurrency: int
    max_deliveries: int
    backoff: Backoff
    lease: float
    maxlen: int | None
    start: Literal["latest", "earliest"]
    lag_warning: int
    batch: int
    max_age: float | None = None
    rate: Rate | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class SubscribeSpec:
    channels: tuple[str, ...]
    pattern: str | None
    sharded: bool
    buffer: int
    concurrency: int
    timeout: float | None = None


Spec = TaskSpec | StreamSpec | SubscribeSpec


class Handler:
    """A declared handler. Calling it calls the function directly (handy in unit tests)."""

    kind: Kind

    def __init__(self, app: Producing, func: HandlerFunc, spec: Spec, key: str) -> None:
        self.app = app
        self.func = func
        self.spec = spec
        self.key = key
        self.name: str = getattr(func, "__name__", repr(func))
        where = f"handler {self.name!r}"
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(f"{where} must be an `async def` function")
        self.body_type, self.message_param = _inspect_signature(func, where)
        try:
            self.codec = Codec(self.body_type)
        except Exception as exc:  # pydantic cannot build a validator for it
            raise ConfigurationError(
                f"{where}: cannot validate bodies of type {self.body_type!r}: {exc}"
            ) from exc
        # Look like the function to tools that introspect it (docs, debuggers, pytest).
        self.__doc__ = func.__doc__
        self.__wrapped__ = func
        self.__module__ = getattr(func, "__module__", __name__)
        self.__name__ = self.name
        self.__qualname__ = getattr(func, "__qualname__", self.name)

    def _decode_as_sent(self, body: Any) -> Any:
        """Decode ``body`` as this handler would receive it (encoded, then decoded)."""
        raise NotImplementedError

    def _check(self, bodies: Sequence[Any]) -> None:
        """Refuse, before anything is sent, a body this handler would dead-letter at once.
        The check decodes what goes on the wire, so a body is judged exactly as the handler
        will see it (a dict for a model handler passes when its fields validate)."""
        if self.codec.takes_any:
            return
        for index, body in enumerate(bodies):
            try:
                self._decode_as_sent(body)
            except DecodeError as exc:
                which = f" (body {index})" if len(bodies) > 1 else ""
                raise InvalidBody(
                    f"handler {self.name!r} on {self.key!r} would refuse this body{which}: {exc}"
                ) from None

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.func(*args, **kwargs)

    async def invoke(self, body: Any, message: Message) -> None:
        if self.message_param is None:
            await self.func(body)
        else:
            await self.func(body, **{self.message_param: message})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.key!r}>"


class TaskHandler(Handler):
    kind = "task"
    spec: TaskSpec

    async def enqueue(
        self,
        body: Any,
        *,
        delay: float = 0,
        at: datetime | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Enqueue ``body`` on this handler's queue; returns the message id. The body is
        validated against the handler's annotation first (``InvalidBody`` if it fails)."""
        self._check([body])
        return await self.app.enqueue(self.key, body, delay=delay, at=at, headers=headers)

    async def enqueue_many(
        self, bodies: Sequence[Any], *, delay: float = 0, at: datetime | None = None
    ) -> list[str]:
        """Enqueue every body in one round trip; returns their ids. Nothing is sent unless
        every body validates."""
        bodies = list(bodies)
        self._check(bodies)
        return await self.app.enqueue_many(self.key, bodies, delay=delay, at=at)

    async def result(self, id: str, *, timeout: float | None = None) -> Any:
        """Wait for job ``id`` of this handler's queue (``App.result``)."""
        return await self.app.result(
            self.key, id, timeout=timeout, result_type=self.spec.result_type
        )

    async def request(self, body: Any, *, timeout: float | None = None) -> Any:
        """Enqueue ``body`` (validated first) and wait for its result (``App.request``)."""
        self._check([body])
        return await self.app.request(
            self.key, body, timeout=timeout, result_type=self.spec.result_type
        )

    async def cancel(self, id: str) -> bool:
        """Cancel job ``id`` of this handler's queue (``App.cancel``)."""
        return await self.app.cancel(self.key, id)

    def _decode_as_sent(self, body: Any) -> Any:
        return self.codec.decode_item(parse_task_item(encode_envelope(body, msg_id="", now=0)))


class StreamHandler(Handler):
    kind = "stream"
    spec: StreamSpec

    async def append(self, body: Any) -> str:
        """Append ``body`` to this handler's stream; returns the entry id. The body is
        validated against the handler's annotation first (``InvalidBody`` if it fails)."""
        self._check([body])
        return await self.app.append(self.key, body)

    async def append_many(self, bodies: Sequence[Any]) -> list[str]:
        """Append every body in one round trip; returns the entry ids. Nothing is sent
        unless every body validates."""
        bodies = list(bodies)
        self._check(bodies)
        return await self.app.append_many(self.key, bodies)

    def _decode_as_sent(self, body: Any) -> Any:
        fields = encode_fields(body)
        raw = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}
        return self.codec.decode_fields(decode_fields_raw(raw))


class SubscribeHandler(Handler):
    kind = "subscribe"
    spec: SubscribeSpec

    def _channel(self) -> str:
        if self.spec.pattern is not None or len(self.spec.channels) != 1:
            raise ConfigurationError(
                f"handler {self.name!r} does not have exactly one channel; "
                "use app.publish(channel, body) instead"
            )
        return self.spec.channels[0]

    async def publish(self, body: Any) -> int:
        """Publish ``body`` on this handler's channel (sharded if the handler is). The body
        is validated against the handler's annotation first (``InvalidBody`` if it fails)."""
        channel = self._channel()
        self._check([body])
        return await self.app.publish(channel, body, sharded=self.spec.sharded)

    async def publish_many(self, bodies: Sequence[Any]) -> int:
        """Publish every body in one round trip; returns the receivers, summed. Nothing is
        sent unless every body validates."""
        channel = self._channel()
        bodies = list(bodies)
        self._check(bodies)
        return await self.app.publish_many(channel, bodies, sharded=self.spec.sharded)

    def _decode_as_sent(self, body: Any) -> Any:
        return self.codec.decode_text(encode_body(body))


def _inspect_signature(func: HandlerFunc, where: str) -> tuple[Any, str | None]:
    """(body annotation, name of the parameter that wants the Message, or None).

    The Message is always passed by keyword, under whatever name the function gives it."""
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise ConfigurationError(f"{where}: cannot resolve its annotations: {exc}") from exc
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: cannot read its signature: {exc}") from exc
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise ConfigurationError(f"{where} must take the message body as its first parameter")
    body_type = hints.get(params[0].name, Any)
    if _wants_message(body_type):
        raise ConfigurationError(f"{where}: the first parameter receives the body, not Message")
    message_param = None
    for param in params[1:]:
        if _wants_message(hints.get(param.name)):
            if message_param is not None:
                raise ConfigurationError(
                    f"{where}: only one parameter can be annotated `Message` "
                    f"({message_param!r} and {param.name!r})"
                )
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise ConfigurationError(
                    f"{where}: the `Message` parameter {param.name!r} is passed by name; "
                    "it cannot be positional-only"
                )
            message_param = param.name
        elif param.default is inspect.Parameter.empty and param.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            raise ConfigurationError(
                f"{where}: parameter {param.name!r} has no default; a handler takes the body "
                "and optionally a parameter annotated `Message`"
            )
    return body_type, message_param


def _wants_message(annotation: object) -> bool:
    """``Message``, or ``Message | None`` / ``Optional[Message]``."""
    if annotation is Message:
        return True
    args = typing.get_args(annotation)
    return bool(args) and Message in args and all(a in (Message, type(None)) for a in args)


def task_spec(
    queue: object,
    *,
    concurrency: object,
    max_attempts: object,
    backoff: object,
    lease: object,
    batch: object,
    cron: object = None,
    tz: object = "UTC",
    every: object = None,
    rate: object = None,
    timeout: object = None,
    result_ttl: object = None,
    result_type: object = None,
    where: str,
) -> TaskSpec:
    if not isinstance(backoff, Backoff):
        raise ConfigurationError(f"{where}: backoff must be an aioredq.Backoff")
    check_schedule(cron, tz, every, where)
    if result_type is not None:
        try:
            Codec(result_type)
        except Exception as exc:
            raise ConfigurationError(
                f"{where}: cannot validate results of type {result_type!r}: {exc}"
            ) from exc
    return TaskSpec(
        queue=_key_name(queue, "queue", where),
        concurrency=_positive_int(concurrency, "concurrency", where),
        max_attempts=_positive_int(max_attempts, "max_attempts", where),
        backoff=backoff,
        lease=_positive_float(lease, "lease", where),
        batch=_positive_int(batch, "batch", where),
        cron=cron,  # type: ignore[arg-type]  # checked above
        tz=tz,  # type: ignore[arg-type]
        every=None if every is None else float(every),  # type: ignore[arg-type]
        rate=parse_rate(rate, where),
        timeout=_optional_seconds(timeout, "timeout", where),
        result_ttl=_optional_seconds(result_ttl, "result_ttl", where),
        result_type=result_type,
    )


def stream_spec(
    stream: object,
    *,
    group: object,
    concurrency: object,
    max_deliveries: object,
    backoff: object,
    lease: object,
    maxlen: object,
    start: object,
    lag_warning: object,
    batch: object,
    max_age: object = None,
    rate: object = None,
    timeout: object = None,
    where: str,
) -> StreamSpec:
    if group is not None:
        group = _key_name(group, "group", where)
    if not isinstance(backoff, Backoff):
        raise ConfigurationError(f"{where}: backoff must be an aioredq.Backoff")
    if maxlen is not None:
        maxlen = _positive_int(maxlen, "maxlen", where)
    age = None if max_age is None else _positive_float(max_age, "max_age", where)
    if start not in ("latest", "earliest"):
        raise ConfigurationError(f"{where}: start must be 'latest' or 'earliest', got {start!r}")
    return StreamSpec(
        stream=_key_name(stream, "stream", where),
        group=group,
        concurrency=_positive_int(concurrency, "concurrency", where),
        max_deliveries=_positive_int(max_deliveries, "max_deliveries", where),
        backoff=backoff,
        lease=_positive_float(lease, "lease", where),
        maxlen=maxlen,
        start=start,
        lag_warning=_positive_int(lag_warning, "lag_warning", where),
        batch=_positive_int(batch, "batch", where),
        max_age=age,
        rate=parse_rate(rate, where),
        timeout=_optional_seconds(timeout, "timeout", where),
    )


def subscribe_spec(
    channels: Sequence[object],
    *,
    pattern: object,
    sharded: object,
    buffer: object,
    concurrency: object,
    timeout: object = None,
    where: str,
) -> SubscribeSpec:
    names = tuple(_key_name(c, "channel", where) for c in channels)
    if pattern is not None:
        pattern = _key_name(pattern, "pattern", where)
        if names:
            raise ConfigurationError(f"{where}: give channels or pattern=, not both")
        if sharded:
            raise ConfigurationError(f"{where}: sharded channels cannot be patterns")
    elif not names:
        raise ConfigurationError(f"{where}: subscribe needs at least one channel or pattern=")
    if not isinstance(sharded, bool):
        raise ConfigurationError(f"{where}: sharded must be True or False")
    return SubscribeSpec(
        channels=names,
        pattern=pattern,
        sharded=sharded,
        buffer=_positive_int(buffer, "buffer", where),
        concurrency=_positive_int(concurrency, "concurrency", where),
        timeout=_optional_seconds(timeout, "timeout", where),
    )
