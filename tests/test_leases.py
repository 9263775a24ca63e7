"""Leases under stress: consumers' heartbeats and acks have connections of their own and a
deadline below the lease; a consumer that cannot renew starts no new work until it can; a stop
takes at most ``shutdown_timeout``, Redis up or down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import pytest
import redis.asyncio
from _proxy import BlackHoleProxy
from _servers import RedisServer
from _waiting import until, until_redis

from aioredq import App, Message

TAKEN_OVER = ("no longer registered", "dead consumer", "silent consumers", "no longer pending")


def _warnings(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and any(n in r.getMessage() for n in needles)
    ]


async def _held(client: redis.asyncio.Redis, queue: str) -> int:
    total = 0
    async for key in client.scan_iter(match=f"{{{queue}}}:processing:*"):
        total += int(await client.llen(key))
    return total


async def test_a_producer_burst_longer_than_the_lease_costs_no_lease(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Producers queue for the app's few connections for four leases on end, while the same
    app consumes with a short lease next to another consumer that would take over a lapsed
    one: no lease lapses, no job runs twice."""
    caplog.set_level(logging.WARNING, logger="aioredq")
    lease = 0.5
    app = App(redis_url, max_connections=2)
    other = App(redis_url)
    runs: Counter[int] = Counter()
    deliveries: list[int] = []

    async def handle(n: int, message: Message) -> None:
        runs[n] += 1
        deliveries.append(message.attempt)
        await asyncio.sleep(0.001)

    app.add_task(handle, "jobs", concurrency=4, lease=lease)
    other.add_task(handle, "jobs", concurrency=4, lease=lease)
    produced = 0

    async def produce(first: int, until_at: float) -> None:
        nonlocal produced
        n = first
        while time.monotonic() < until_at:
            await app.enqueue("jobs", n)
            produced += 1
            n += 1000
            # 100 of these share 2 connections: each waits its turn, the burst never lets up.

    async with app, other:
        end = time.monotonic() + 4 * lease
        await asyncio.gather(*(produce(i, end) for i in range(100)))
        await until(lambda: sum(runs.values()) >= produced, "every produced job to run")
    print(f"\nburst: {produced} jobs enqueued by 100 producers on 2 connections over {4 * lease}s")
    assert produced > 100
    assert sorted(runs) == sorted(set(runs)) and set(runs.values()) == {1}, "a job ran twice"
    assert set(deliveries) == {1}
    assert not _warnings(caplog, *TAKEN_OVER, "lease not renewed")


async def test_a_consumer_that_cannot_renew_starts_no_new_work_until_it_can(
    redis_url: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The app's connections to Redis go silent (a black hole, not a refusal): its
    heartbeats give up at their deadline, it stops starting work before its lease lapses and
    says so; the job it had queued runs once, elsewhere; once new connections work it renews
    and runs new work again."""
    caplog.set_level(logging.WARNING, logger="aioredq")
    release = asyncio.Event()
    started: list[str] = []
    elsewhere: list[str] = []
    async with BlackHoleProxy(redis_url) as proxy:
        app = App(proxy.url, shutdown_timeout=1.0)
        other = App(redis_url)

        @app.task("jobs", concurrency=1, lease=1.0)
        async def job(body: str) -> None:
            started.append(body)
            if body == "slow":
                await release.wait()

        @other.task("jobs", concurrency=1, lease=1.0)
        async def job_elsewhere(body: str) -> None:
            elsewhere.append(body)

        await app.start()
        try:
            await redis_client.lpush("jobs", "slow")
            await until(lambda: started == ["slow"], "the slow job to start")
            await redis_client.lpush("jobs", "next")
            # Fetched and queued behind the slow one (concurrency 1).
            await until_redis(lambda: _held(redis_client, "jobs"), 2, "both jobs held")
            await other.start()
            proxy.freeze()
            await until(lambda: bool(_warnings(caplog, "lease not renewed")), "the pause")
            release.set()  # the slot is free now, but the queued job must not start here
            await until(lambda: "next" in elsewhere, "the queued job to run elsewhere")
            await other.stop()  # from here on only the app can run new work
            proxy.thaw()
            await until(lambda: bool(_warnings(caplog, "lease renewed after")), "the resume")
            await redis_client.lpush("jobs", "new")
            await until(lambda: "new" in started, "new work to run in the app again")
        finally:
            release.set()
            await app.aclose()
            await other.aclose()
    assert started == ["slow", "new"], "the app started work it no longer held"
    assert elsewhere.count("next") == 1
    # The app said it stopped, once, before anyone took its work over.
    paused = _warnings(caplog, "lease not renewed")
    assert len(paused) == 1, paused
    order = [r.getMessage() for r in caplog.records]
    first_takeover = min(i for i, m in enumerate(order) if "dead consumer" in m)
    assert order.index(paused[0]) < first_takeover


async def test_a_group_consumer_that_cannot_renew_starts_no_new_work_until_it_can(
    redis_url: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for a stream group: the entry queued behind a running one is claimed and run
    by the other consumer once the silent one's lease lapses, and never started by it."""
    caplog.set_level(logging.WARNING, logger="aioredq")
    release = asyncio.Event()
    started: list[str] = []
    elsewhere: list[str] = []
    async with BlackHoleProxy(redis_url) as proxy:
        app = App(proxy.url, shutdown_timeout=1.0)
        other = App(redis_url)

        @app.stream("events", group="g", concurrency=1, lease=1.0)
        async def event(body: dict[str, str]) -> None:
            started.append(body["n"])
            if body["n"] == "slow":
                await release.wait()

        @other.stream("events", group="g", concurrency=1, lease=1.0)
        async def event_elsewhere(body: dict[str, str]) -> None:
            elsewhere.append(body["n"])

        await app.start()
        try:
            await redis_client.xadd("events", {"n": "slow"})
            await until(lambda: started == ["slow"], "the slow entry to start")
            await redis_client.xadd("events", {"n": "next"})
            await until_redis(
                lambda: _pending(redis_client, "events", "g"), 2, "both entries delivered"
            )
            await other.start()
            proxy.freeze()
            await until(lambda: bool(_warnings(caplog, "lease not renewed")), "the pause")
            release.set()
            await until(lambda: "next" in elsewhere, "the queued entry to run elsewhere")
            proxy.thaw()
            await until(lambda: bool(_warnings(caplog, "lease renewed after")), "the resume")
            # Its read in flight is lost in the black hole until the blocking client's socket
            # timeout (10 s): stop here rather than wait for new work. A queued entry would
            # have started at the resume, before this stop hands back what is unstarted.
        finally:
            release.set()
            await app.aclose()
            await other.aclose()
    assert started == ["slow"], "the app started work it no longer held"
    assert elsewhere.count("next") == 1
    assert len(_warnings(caplog, "lease not renewed")) == 1


async def _pending(client: redis.asyncio.Redis, stream: str, group: str) -> int:
    return int((await client.xpending(stream, group))["pending"])


async def test_stop_with_redis_down_gives_up_at_the_shutdown_timeout(
    fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stops while handlers run and jobs wait: the stop still ends, giving up on what
    it cannot write (the leases return that work) and saying so."""
    caplog.set_level(logging.WARNING, logger="aioredq")
    shutdown_timeout = 1.0
    app = App(fresh_redis.url, shutdown_timeout=shutdown_timeout)
    running: list[str] = []
    never = asyncio.Event()

    @app.task("jobs", concurrency=2, lease=30.0)
    async def job(body: str) -> None:
        running.append(body)
        await never.wait()

    @app.stream("events", group="g", concurrency=2, lease=30.0, start="earliest")
    async def event(body: dict[str, str]) -> None:
        running.append(body["n"])
        await never.wait()

    await app.enqueue_many("jobs", [f"j{i}" for i in range(10)])
    await app.append_many("events", [{"n": f"e{i}"} for i in range(10)])
    await app.start()
    try:
        await until(lambda: len(running) == 4, "four handlers running")
    except BaseException:
        await app.aclose()
        raise
    fresh_redis.stop()
    began = time.monotonic()
    await asyncio.wait_for(app.aclose(), timeout=60)
    took = time.monotonic() - began
    print(f"\nstop with Redis down: {took:.2f}s for shutdown_timeout={shutdown_timeout}s")
    gave_up = _warnings(caplog, "gave up")
    assert any("handing back" in m and "jobs" in m for m in gave_up), gave_up
    assert any("handing back" in m and "events" in m for m in gave_up), gave_up
