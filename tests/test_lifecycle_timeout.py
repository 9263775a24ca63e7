"""``timeout=``: a handler running past it is cancelled, and the delivery is a failure."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio
from _waiting import until, until_redis

from aioredq import App, Backoff

FAST = Backoff(0.01, 1, 0.01, jitter=False)


async def test_a_hanging_task_times_out_and_is_dead_lettered_after_max_attempts(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    calls: list[int] = []

    @app.task("hangs", timeout=0.2, max_attempts=2, backoff=FAST)
    async def hang(body: str) -> None:
        calls.append(1)
        await asyncio.Event().wait()

    async with app:
        await app.enqueue("hangs", "x")
        await until_redis(lambda: redis_client.llen("{hangs}:dead"), 1, "the dead letter")
        stats = app.stats()["hang"]
    (letter,) = [json.loads(x) for x in await redis_client.lrange("{hangs}:dead", 0, -1)]
    assert letter["error"].startswith("HandlerTimeout: ")
    assert letter["attempts"] == 2
    assert len(calls) == 2
    assert stats.timed_out == 2
    assert stats.dead_lettered == 1


async def test_a_handler_that_swallows_its_cancellation_still_frees_its_slot(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    release = asyncio.Event()
    done: list[str] = []

    @app.task("stubborn", timeout=0.2, max_attempts=1, concurrency=1)
    async def stubborn(body: str) -> None:
        if body == "stuck":
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # a handler that ignores cancellation
        done.append(body)

    async with app:
        await app.enqueue("stubborn", "stuck")
        await app.enqueue("stubborn", "next")
        # One slot: "next" runs only if the stuck call no longer holds it.
        await until(lambda: done == ["next"], what="the next job in the only slot")
        assert app.stats()["stubborn"].timed_out == 1
        release.set()
    assert await redis_client.llen("{stubborn}:dead") == 1


async def test_a_subscribe_handler_times_out(redis_url: str) -> None:
    app = App(redis_url)
    got: list[str] = []

    @app.subscribe("ticks", timeout=0.1)
    async def tick(body: str) -> None:
        if body == "slow":
            await asyncio.Event().wait()
        got.append(body)

    async with app:
        await until_redis(lambda: app.publish("ticks", "slow"), 1, "a subscriber")
        await until(lambda: app.stats()["tick"].timed_out == 1, what="the timeout")
        await app.publish("ticks", "fast")
        await until(lambda: got == ["fast"], what="the next message")


async def test_a_stream_handler_times_out_and_is_dead_lettered(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)

    @app.stream("hang-events", group="g", start="earliest", timeout=0.2, max_deliveries=1)
    async def hang_event(entry: dict[str, str]) -> None:
        await asyncio.Event().wait()

    async with app:
        await app.append("hang-events", {"n": "1"})
        await until_redis(lambda: redis_client.xlen("{hang-events}:dead"), 1, "the dead letter")
        assert app.stats()["hang_event"].timed_out == 1
    ((_, fields),) = await redis_client.xrange("{hang-events}:dead")
    assert fields[b"error"].startswith(b"HandlerTimeout: ")


async def test_timeouts_on_memory() -> None:
    app = App("memory://")

    @app.task("slow", timeout=0.1, max_attempts=1)
    async def slow(body: str) -> None:
        await asyncio.Event().wait()

    async with app:
        await app.enqueue("slow", "x")
        await until(lambda: app.stats()["slow"].dead_lettered == 1, "the dead letter")
        assert app.stats()["slow"].timed_out == 1
