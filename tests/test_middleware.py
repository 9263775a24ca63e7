"""Middleware around every handler call of every model, and the produce hook, on a real Redis."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis.asyncio
from _waiting import until, until_redis

from aioredq import App, Backoff, ConfigurationError, Message, Reject
from aioredq._middleware import CallNext

Redis = redis.asyncio.Redis
FAST = Backoff(base=0.01, factor=1, cap=0.01, jitter=False)


def recorder(name: str, seen: list[str]) -> Any:
    async def middleware(message: Message, call_next: CallNext) -> Any:
        seen.append(f"{name} in {message.kind}")
        try:
            return await call_next(message)
        finally:
            seen.append(f"{name} out {message.kind}")

    return middleware


async def test_the_first_middleware_is_outermost_for_every_model(redis_url: str) -> None:
    seen: list[str] = []
    app = App(redis_url, middleware=[recorder("a", seen)])
    app.add_middleware(recorder("b", seen))
    handled: list[str] = []

    @app.task("mw-jobs")
    async def job(body: str) -> None:
        seen.append("handler task")
        handled.append(body)

    @app.stream("mw-events", group="g", start="earliest")
    async def event(body: dict[str, str]) -> None:
        seen.append("handler stream")
        handled.append(body["n"])

    @app.subscribe("mw-news")
    async def news(body: str) -> None:
        seen.append("handler subscribe")
        handled.append(body)

    async with app:
        for kind, produce in (
            ("task", lambda: app.enqueue("mw-jobs", "t")),
            ("stream", lambda: app.append("mw-events", {"n": "s"})),
            ("subscribe", lambda: app.publish("mw-news", "p")),
        ):
            await produce()
            await until(lambda k=kind: f"a out {k}" in seen, f"the {kind} handler's call")
    assert sorted(handled) == ["p", "s", "t"]
    for kind in ("task", "stream", "subscribe"):
        assert [s for s in seen if s.endswith(kind)] == [
            f"a in {kind}",
            f"b in {kind}",
            f"handler {kind}",
            f"b out {kind}",
            f"a out {kind}",
        ]


async def test_middleware_can_change_the_message_the_handler_receives(redis_url: str) -> None:
    async def tag(message: Message, call_next: CallNext) -> Any:
        return await call_next(dataclasses.replace(message, headers={"tagged": "yes"}))

    app = App(redis_url, middleware=[tag])
    got: list[dict[str, str]] = []

    @app.task("mw-tag")
    async def job(body: str, message: Message) -> None:
        got.append(message.headers)

    async with app:
        await app.enqueue("mw-tag", "x", headers={"tagged": "no"})
        await until(lambda: bool(got), "the handler")
    assert got == [{"tagged": "yes"}]


async def test_errors_swallowed_translated_or_raised(redis_url: str, redis_client: Redis) -> None:
    """A swallowed error acks, a raised one still retries, a Reject still dead-letters."""
    calls: dict[str, int] = {}

    async def policy(message: Message, call_next: CallNext) -> Any:
        try:
            return await call_next(message)
        except KeyError:
            return None  # swallowed: acked
        except LookupError as exc:
            raise Reject(f"bad lookup: {exc}") from exc  # translated: dead-lettered now

    app = App(redis_url, middleware=[policy])

    @app.task("mw-errors", max_attempts=3, backoff=FAST)
    async def job(body: str) -> None:
        calls[body] = calls.get(body, 0) + 1
        if body == "swallow":
            raise KeyError(body)
        if body == "translate":
            raise IndexError(body)
        raise ValueError(body)

    async def letters() -> list[dict[str, Any]]:
        return [json.loads(x) for x in await redis_client.lrange("{mw-errors}:dead", 0, -1)]

    async with app:
        await app.enqueue_many("mw-errors", ["swallow", "translate", "raise"])
        await until_redis(lambda: redis_client.llen("{mw-errors}:dead"), 2, "two dead letters")
        await until(lambda: app.stats().handlers["job"].succeeded == 1, "the swallowed one acked")
    assert calls == {"swallow": 1, "translate": 1, "raise": 3}
    errors = {json.loads(d["body"])["body"]: d["error"] for d in await letters()}
    assert errors == {"translate": "Reject: bad lookup: translate", "raise": "ValueError: raise"}


class Tenant:
    """Middleware with a produce hook: stamps a header on everything the app produces."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, str, int, str]] = []

    async def __call__(self, message: Message, call_next: CallNext) -> Any:
        return await call_next(message)

    @contextmanager
    def _written(self, name: str, operation: str, count: int) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self.produced.append((name, operation, count, type(exc).__name__))
            raise
        self.produced.append((name, operation, count, "ok"))

    def on_produce(self, name: str, headers: dict[str, str], *, operation: str, count: int) -> Any:
        headers["tenant"] = "acme"
        return self._written(name, operation, count)


async def test_the_produce_hook_adds_headers_to_tasks_and_streams(
    redis_url: str, redis_client: Redis
) -> None:
    tenant = Tenant()
    app = App(redis_url, middleware=[tenant])
    tasks: list[tuple[str, dict[str, str]]] = []
    entries: list[tuple[dict[str, str], dict[str, str], dict[str, str] | None]] = []
    published: list[str] = []

    @app.task("mw-hook")
    async def job(body: str, message: Message) -> None:
        tasks.append((body, message.headers))

    @app.stream("mw-hook-s", group="g", start="earliest")
    async def event(body: dict[str, str], message: Message) -> None:
        entries.append((body, message.headers, message.fields))

    @app.subscribe("mw-hook-c")
    async def news(body: str) -> None:
        published.append(body)

    async with app:
        await app.enqueue("mw-hook", "one", headers={"k": "v"})
        await app.enqueue_many("mw-hook", ["two", "three"])
        await app.append_many("mw-hook-s", [{"n": "1"}, {"n": "2"}])
        await app.publish("mw-hook-c", "hi")
        await until(lambda: len(tasks) == 3 and len(entries) == 2 and published, "everything")
    assert sorted(tasks) == [
        ("one", {"k": "v", "tenant": "acme"}),
        ("three", {"tenant": "acme"}),
        ("two", {"tenant": "acme"}),
    ]
    # The stream carries the headers in a reserved field that neither body nor fields show.
    assert sorted(e[0]["n"] for e in entries) == ["1", "2"]
    for body, headers, fields in entries:
        assert headers == {"tenant": "acme"}
        assert set(body) == {"n"} and fields is not None and set(fields) == {"n"}
    [(_, raw)] = await redis_client.xrange("mw-hook-s", count=1)
    assert json.loads(raw[b"aioredq-headers"]) == {"tenant": "acme"}
    # One call of the hook per produce call, a batch included; pub/sub carries no headers.
    assert sorted(tenant.produced) == [
        ("mw-hook", "enqueue", 1, "ok"),
        ("mw-hook", "enqueue", 2, "ok"),
        ("mw-hook-c", "publish", 1, "ok"),
        ("mw-hook-s", "append", 2, "ok"),
    ]


async def test_a_plain_hook_and_a_failed_write(redis_url: str, redis_client: Redis) -> None:
    """A hook of (name, headers) only; a write Redis refuses reaches the hook's context."""
    hooked: list[str] = []

    class Plain:
        async def __call__(self, message: Message, call_next: CallNext) -> Any:
            return await call_next(message)

        def on_produce(self, name: str, headers: dict[str, str]) -> None:
            hooked.append(name)
            headers["x"] = "1"

    tenant = Tenant()
    app = App(redis_url, middleware=[Plain(), tenant])
    await redis_client.set("mw-wrong", "a string")
    async with app:
        with pytest.raises(Exception, match=r"WRONGTYPE|wrong kind|type"):
            await app.enqueue("mw-wrong", "x")
    assert hooked == ["mw-wrong"]
    assert tenant.produced[0][:3] == ("mw-wrong", "enqueue", 1)
    assert tenant.produced[0][3] != "ok"


async def test_without_middleware_the_consumer_calls_the_handler_itself(redis_url: str) -> None:
    """No middleware, no wrapper: the frame that calls the handler is the consumer's own."""
    app = App(redis_url)
    callers: list[str] = []

    @app.task("mw-direct")
    async def job(body: str) -> None:
        frame = sys._getframe(1)
        callers.append(frame.f_code.co_name)

    @app.subscribe("mw-direct-c")
    async def news(body: str) -> None:
        callers.append(sys._getframe(1).f_code.co_name)

    async with app:
        await app.enqueue("mw-direct", "x")
        await app.publish("mw-direct-c", "y")
        await until(lambda: len(callers) == 2, "both handlers")
    # The pool's worker (tasks) and the subscriber's runner: not a chain's ``innermost``.
    assert sorted(callers) == ["_work", "run"]


def test_middleware_must_be_an_async_callable() -> None:
    def sync(message: Message, call_next: CallNext) -> Any:
        return call_next(message)

    with pytest.raises(ConfigurationError, match="async"):
        App("memory://", middleware=[sync])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="async"):
        App("memory://").add_middleware(object())  # type: ignore[arg-type]
