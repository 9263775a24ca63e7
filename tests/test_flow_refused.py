"""Hostile input for the flow-control scripts: refused writes (``maxmemory``), keys of the
wrong type, bodies over ``max_body_bytes``. Each is refused or reported clearly, nothing is
half written or lost, and the work flows once the cause is gone."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from _waiting import until, until_redis
from redis.asyncio import Redis

from aioredq import AioredqError, App, MessageTooLarge
from aioredq._codec import encode_envelope
from aioredq._transports.queue import QueueTransport
from aioredq._transports.schedule import ScheduleTransport


async def snapshot(client: Redis) -> dict[bytes, Any]:
    """Every key with its type and whole content."""
    state: dict[bytes, Any] = {}
    async for key in client.scan_iter():
        kind = (await client.type(key)).decode()
        if kind == "list":
            state[key] = (kind, await client.lrange(key, 0, -1))
        elif kind == "zset":
            state[key] = (kind, await client.zrange(key, 0, -1, withscores=True))
        elif kind == "hash":
            state[key] = (kind, await client.hgetall(key))
        else:
            state[key] = (kind, await client.get(key))
    return state


async def test_refused_writes_leave_everything_as_it_was_then_flow(
    redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url)
    fetcher = QueueTransport(redis_client, "fr", "c1")
    ticker = ScheduleTransport(redis_client, "fr", "tick")
    await app.enqueue("fr", "waiting")  # something for the rate-limited fetch to take
    await redis_client.config_set("maxmemory-policy", "noeviction")
    before = await snapshot(redis_client)
    await redis_client.config_set("maxmemory", 1)
    try:
        with pytest.raises(AioredqError, match="maxmemory"):
            await app.enqueue("fr", "keyed", key="k", key_ttl=5)
        with pytest.raises(AioredqError, match="maxmemory"):
            await app.enqueue("fr", "high", priority=7)
        with pytest.raises(Exception, match="maxmemory"):
            await ticker.fire(1_000, encode_envelope("tick", msg_id="t1"))
        with pytest.raises(Exception, match="maxmemory"):
            await fetcher.fetch(4, 60_000, "c1:", 4, rate=(50, 1000))
        assert await snapshot(redis_client) == before  # nothing half written
    finally:
        await redis_client.config_set("maxmemory", 0)
    assert await app.enqueue("fr", "keyed", key="k") == await app.enqueue("fr", "again", key="k")
    await app.enqueue("fr", "high", priority=7)
    assert await ticker.fire(1_000, encode_envelope("tick", msg_id="t1"))
    got = await fetcher.fetch(10, 60_000, "c1:", 10, rate=(50, 1000))
    bodies = [item.split(b'"body":')[1] for item in got.items]
    assert bodies == [b'"high"}', b'"waiting"}', b'"keyed"}', b'"tick"}']
    assert await redis_client.zcard("{fr}:rate") == 4  # the starts granted, once
    await app.aclose()


@pytest.mark.parametrize("option", ["key", "priority"])
async def test_a_body_over_max_body_bytes_is_refused_before_anything_is_written(
    option: str, redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url)
    extra: dict[str, Any] = {"key": "big"} if option == "key" else {"priority": 5}
    try:
        with pytest.raises(MessageTooLarge, match="max_body_bytes"):
            await app.enqueue("fr-big", "x" * (10 << 20), **extra)
        assert await redis_client.keys("*") == []
        await app.enqueue("fr-big", "small", **extra)  # the key was not taken either
        assert (
            await redis_client.llen("fr-big") + await redis_client.llen("{fr-big}:priority:5") == 1
        )
    finally:
        await app.aclose()


async def test_a_wrong_typed_schedule_is_reported_once_and_ticks_resume_once_fixed(
    redis_url: str, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(redis_url)
    runs: list[object] = []

    @app.task("fr-tick", every=0.2)
    async def tick(at: object) -> None:
        runs.append(at)

    await redis_client.set("{fr-tick}:schedule:tick", "not a hash")
    with caplog.at_level(logging.WARNING, logger="aioredq"):
        async with app:
            await until(lambda: "WRONGTYPE" in caplog.text, "the schedule's problem logged")
            await asyncio.sleep(2.5)  # an absence: the scheduler retries, and must not repeat
            assert await redis_client.llen("fr-tick") == 0 and not runs
            assert await redis_client.get("{fr-tick}:schedule:tick") == b"not a hash"
            await redis_client.delete("{fr-tick}:schedule:tick")
            await until(lambda: len(runs) >= 2, "ticks run again")
    assert len(app_ticks_tried(caplog)) == 1  # reported once, not once per attempt
    assert "periodic ticks working again" in caplog.text


def app_ticks_tried(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "periodic tick not enqueued" in r.getMessage()]


async def test_a_wrong_typed_rate_window_holds_the_queue_and_it_flows_once_fixed(
    redis_url: str, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(redis_url)
    done: list[str] = []

    @app.task("fr-rate", rate="100/s")
    async def job(body: str) -> None:
        done.append(body)

    await app.enqueue("fr-rate", "a")
    await redis_client.lpush("{fr-rate}:rate", "foreign")
    with caplog.at_level(logging.WARNING, logger="aioredq"):
        async with app:
            await until(lambda: "WRONGTYPE" in caplog.text, "the rate window's problem logged")
            await asyncio.sleep(1.5)  # an absence: the worker retries, and must not repeat
            assert not done and await redis_client.llen("fr-rate") == 1  # nothing taken
            await redis_client.delete("{fr-rate}:rate")
            await until(lambda: done == ["a"], "the job run once the key is fixed")
    reports = [r for r in caplog.records if "WRONGTYPE" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in reports]


@pytest.mark.parametrize("name", ["paused", "throttled"])
async def test_a_pause_or_throttle_key_of_any_type_holds_the_queue(
    name: str, redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url)
    done: list[str] = []

    @app.task("fr-hold")
    async def job(body: str) -> None:
        done.append(body)

    await app.enqueue("fr-hold", "a")
    await redis_client.hset(f"{{fr-hold}}:{name}", "any", "type")  # present is all it takes
    async with app:
        await until_redis(lambda: redis_client.exists("{fr-hold}:consumers"), 1, "a fetch")
        await asyncio.sleep(0.5)  # an absence: give the worker time to (wrongly) start it
        assert not done and await redis_client.llen("fr-hold") == 1
        await redis_client.delete(f"{{fr-hold}}:{name}")
        await until(lambda: done == ["a"], "the job run once the key is gone")


async def test_a_wrong_typed_priority_list_refuses_the_enqueue_and_takes_no_key(
    redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url)
    try:
        await redis_client.set("{fr-p}:priority:7", "not a list")
        with pytest.raises(AioredqError, match="WRONGTYPE"):
            await app.enqueue("fr-p", "plain", priority=7)
        with pytest.raises(AioredqError, match="WRONGTYPE"):
            await app.enqueue("fr-p", "keyed", priority=7, key="k")
        assert await redis_client.exists("{fr-p}:key:k") == 0
        assert await redis_client.get("{fr-p}:priority:7") == b"not a list"
        await redis_client.delete("{fr-p}:priority:7")
        await app.enqueue("fr-p", "keyed", priority=7, key="k")
        assert await redis_client.llen("{fr-p}:priority:7") == 1
    finally:
        await app.aclose()


async def test_a_dedup_key_made_wrong_typed_while_its_job_waits_loses_nothing(
    redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url)
    done: list[str] = []

    @app.task("fr-key")
    async def job(body: str) -> None:
        done.append(body)

    await app.enqueue("fr-key", "a", key="k")
    await redis_client.delete("{fr-key}:key:k")
    await redis_client.lpush("{fr-key}:key:k", "foreign")
    async with app:
        await until(lambda: done == ["a"], "the job run")
    assert await redis_client.lrange("{fr-key}:key:k", 0, -1) == [b"foreign"]  # left alone
    await redis_client.delete("{fr-key}:key:k")
    await app.enqueue("fr-key", "b", key="k")
    async with app:
        await until(lambda: done == ["a", "b"], "a new keyed job once the key is fixed")


async def test_a_wrong_typed_group_rate_window_holds_the_group_and_it_flows_once_fixed(
    redis_url: str, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(redis_url)
    done: list[str] = []

    @app.stream("fr-srate", group="g", rate="100/s", start="earliest")
    async def entry(body: dict[str, str]) -> None:
        done.append(body["n"])

    await app.append("fr-srate", {"n": "1"})
    await redis_client.lpush("{fr-srate}:rate:g", "foreign")
    with caplog.at_level(logging.WARNING, logger="aioredq"):
        async with app:
            await until(lambda: "WRONGTYPE" in caplog.text, "the rate window's problem logged")
            await asyncio.sleep(1.5)  # an absence: the worker retries, and must not repeat
            assert not done
            await redis_client.delete("{fr-srate}:rate:g")
            await until(lambda: done == ["1"], "the entry run once the key is fixed")
    reports = [r for r in caplog.records if "WRONGTYPE" in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in reports]
