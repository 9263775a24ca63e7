"""OpenTelemetry tracing: ``App(..., middleware=[aioredq.otel.Tracing()])``.

Needs ``pip install 'aioredq[otel]'`` (opentelemetry-api and -sdk). Every enqueue, append and
publish is a PRODUCER span (a batch is one span with its count), and every handler call a
CONSUMER span named ``process <name>``, the child of the producer's span: the producer's context
travels as W3C ``traceparent`` (and ``tracestate``) in the task envelope's headers and in the
reserved stream field ``aioredq-headers``. A published pub/sub payload has no room for it, so a
pub/sub handler call starts a new trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised in a process without the extra
    raise ImportError("aioredq.otel needs OpenTelemetry: pip install 'aioredq[otel]'") from exc

from . import __version__
from ._exceptions import Reject
from ._logging import trace_id
from ._message import Message
from ._middleware import CallNext

__all__ = ["Tracing"]

SYSTEM = "redis"
_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """Middleware that traces producing and handling with OpenTelemetry.

    ``tracer_provider``: where spans go; default the global one
    (``opentelemetry.trace.set_tracer_provider``).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("aioredq", __version__, tracer_provider=tracer_provider)
        # (name, group) -> the CONSUMER span's name and its constant attributes.
        self._consumers: dict[tuple[str, str | None], tuple[str, dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return "Tracing()"

    def on_produce(
        self, name: str, headers: dict[str, str], *, operation: str = "send", count: int = 1
    ) -> Any:
        """Start the PRODUCER span and put its context in ``headers``; the span ends (with
        the error, if any) when the write to Redis does."""
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": name,
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
        }
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        span = self._tracer.start_span(
            f"{operation} {name}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        return _ending(span)

    async def __call__(self, message: Message, call_next: CallNext) -> Any:
        """Run the handler in a CONSUMER span, the child of the producer's span."""
        parent = _PROPAGATOR.extract(message.headers) if message.headers else None
        name, attributes = self._consumer_start(message)
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        token = context.attach(trace.set_span_in_context(span))
        try:
            trace_id.set(format(span.get_span_context().trace_id, "032x"))
            return await call_next(message)
        except Exception as exc:
            _outcome(span, message, exc)
            _failed(span, exc)
            raise
        finally:
            context.detach(token)
            span.end()

    def _consumer_start(self, message: Message) -> tuple[str, dict[str, Any]]:
        """The CONSUMER span's name and attributes: what is the same for every message of a
        handler made once, the message's own (and a pattern's channel) added per call."""
        key = (message.name, message.group)
        known = self._consumers.get(key)
        if known is None:
            known = self._consumers[key] = _consumer_base(message)
        name, base = known
        attributes = {**base, "messaging.message.delivery_count": message.attempt}
        if message.id:
            attributes["messaging.message.id"] = message.id
        if message.channel != message.name:
            attributes["messaging.destination.template"] = message.name
            attributes["messaging.destination.name"] = message.channel
        return name, attributes


def _consumer_base(message: Message) -> tuple[str, dict[str, Any]]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": message.name,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
    }
    if message.group is not None:
        attributes["messaging.consumer.group.name"] = message.group
    return f"process {message.name}", attributes


def _failed(span: Any, exc: Exception) -> None:
    """What ``start_as_current_span`` does with a handler's error: recorded, status ERROR."""
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _outcome(span: Any, message: Message, exc: Exception) -> None:
    """Say on the span what becomes of the message: retried later, or dead-lettered."""
    limit = message.max_attempts
    if limit is None:  # pub/sub: never retried
        return
    if isinstance(exc, Reject) or message.attempt >= limit:
        span.set_attribute("aioredq.outcome", "dead_letter")
        span.add_event("dead_letter", {"attempt": message.attempt, "max_attempts": limit})
    else:
        span.set_attribute("aioredq.outcome", "retry")
        span.add_event("retry", {"attempt": message.attempt, "max_attempts": limit})


@contextmanager
def _ending(span: Any) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        span.end()
