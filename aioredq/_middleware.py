"""Middleware: ``async def m(message, call_next)`` around every handler call, and the produce
hook ``on_produce(name, headers)`` that lets middleware add headers to what the app produces.

The first middleware in the list is the outermost: it sees the message first and the outcome
last. A chain is built once per handler when its consumer starts; with no middleware there is
no chain, and the consumers call the handler directly, as they always did.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ._exceptions import ConfigurationError
from ._handlers import Handler
from ._message import Message

CallNext = Callable[[Message], Awaitable[Any]]
Middleware = Callable[[Message, CallNext], Awaitable[Any]]
# The handler's call through the middleware: (the message, the decoded body) -> its result.
Chain = Callable[[Message, Any], Awaitable[Any]]


class ProduceHook(Protocol):
    """``on_produce`` as the producer calls it: once per produce call (a batch included)."""

    def __call__(
        self, name: str, headers: dict[str, str], operation: str, count: int
    ) -> AbstractContextManager[Any] | None: ...


def check(middleware: object) -> Middleware:
    """``middleware`` if it is an async callable of (message, call_next), else a clear error."""
    call = getattr(middleware, "__call__", None)  # noqa: B004 - instances with async __call__
    if not (inspect.iscoroutinefunction(middleware) or inspect.iscoroutinefunction(call)):
        raise ConfigurationError(
            f"middleware {middleware!r} must be an async function "
            "'async def m(message, call_next)' (or an object with such a __call__)"
        )
    return middleware  # type: ignore[return-value]


def produce_hook(middleware: object) -> ProduceHook | None:
    """The middleware's ``on_produce``, called with the operation and the count as keywords
    when it accepts them (``operation="enqueue"``, ``count=100``), else as (name, headers)."""
    hook = getattr(middleware, "on_produce", None)
    if hook is None:
        return None
    if not callable(hook):
        raise ConfigurationError(f"{middleware!r}.on_produce must be callable")
    params = inspect.signature(hook).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if takes_all or {"operation", "count"} <= params.keys():
        return hook  # type: ignore[no-any-return]

    def plain(
        name: str, headers: dict[str, str], operation: str, count: int
    ) -> AbstractContextManager[Any] | None:
        result: AbstractContextManager[Any] | None = hook(name, headers)
        return result

    return plain


def producing(
    hooks: Sequence[ProduceHook],
    name: str,
    operation: str,
    count: int,
    headers: dict[str, str] | None,
) -> AbstractContextManager[dict[str, str] | None]:
    """Run every hook on a copy of ``headers`` (the caller's dict is left alone) and give it
    to the ``with`` block; a context manager a hook returns is entered around the write, and
    sees its error. Without hooks: ``headers`` as they are, and no generator to run."""
    if not hooks:
        return contextlib.nullcontext(headers)
    return _hooked(hooks, name, operation, count, headers)


@contextlib.contextmanager
def _hooked(
    hooks: Sequence[ProduceHook],
    name: str,
    operation: str,
    count: int,
    headers: dict[str, str] | None,
) -> Iterator[dict[str, str] | None]:
    added = dict(headers or {})
    with contextlib.ExitStack() as stack:
        for hook in hooks:
            ending = hook(name, added, operation=operation, count=count)
            if ending is not None:
                stack.enter_context(ending)
        yield added or None


def chain(middleware: Sequence[Middleware], handler: Handler) -> Chain | None:
    """The handler's call through ``middleware`` (first = outermost), or None without any.

    Built once: a call makes no frame of its own, the outermost middleware is called
    directly, and the innermost ``call_next`` hands back the handler's own coroutine; only
    what binds this call's body (and the links between inner middleware) is made per call."""
    if not middleware:
        return None
    outermost = middleware[0]
    inner = tuple(reversed(middleware[1:]))
    func = handler.func
    message_param = handler.message_param

    def run(message: Message, body: Any) -> Awaitable[Any]:
        if message_param is None:

            def innermost(msg: Message) -> Awaitable[Any]:
                return func(body)

        else:

            def innermost(msg: Message) -> Awaitable[Any]:
                return func(body, **{message_param: msg})

        call: CallNext = innermost
        for layer in inner:
            call = _wrap(layer, call)
        return outermost(message, call)

    return run


def _wrap(layer: Middleware, call_next: CallNext) -> CallNext:
    def call(message: Message) -> Awaitable[Any]:
        return layer(message, call_next)

    return call
