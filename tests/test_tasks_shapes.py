"""Task queues in the shapes real applications take: several handlers on one queue, refused
writes, wrong-typed keys, oversized and forged items, orphaned processing lists. Against a
real Redis server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from _waiting import until, until_redis
from redis.exceptions import ResponseError

from aioredq import App, Reject, Retry
from aioredq._codec import encode_envelope, parse_task_item
from aioredq._transports.queue import QueueTransport

Redis = redis.asyncio.Redis


async def held(r: Redis, queue: str) -> list[bytes]:
    """Everything in every processing list of ``queue``."""
    items: list[bytes] = []
    for name in await r.keys(f"{{{queue}}}:processing:*"):
        items += await r.lrange(name, 0, -1)
    return items


def letters(raw: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in raw]


# several handlers on one queue --------------------------------------------------------------
def counting_handler(runs: Counter[str], name: str) -> Callable[[str], Awaitable[None]]:
    async def handler(body: str) -> None:
        runs[body] += 1
        await asyncio.sleep(0.005)  # let the other handler take its share

    handler.__name__ = name
    return handler


@pytest.mark.parametrize("same_function", [False, True])
async def test_two_handlers_of_one_app_on_one_queue_run_each_message_once(
    redis_url: str, redis_client: Redis, same_function: bool
) -> None:
    app = App(redis_url)
    runs: Counter[str] = Counter()
    first = counting_handler(runs, "first")
    # The same code twice (an app cannot hold two handlers of one name), or two functions.
    second = counting_handler(runs, "second")
    if not same_function:

        async def second(body: str) -> None:
            runs[body] += 1
            await asyncio.sleep(0.001)

    app.task("shared", concurrency=2, batch=5, lease=1.0)(first)
    app.task("shared", concurrency=3, batch=3, lease=1.0)(second)
    bodies = [f"m{i}" for i in range(60)]
    async with app:
        await app.enqueue_many("shared", bodies)
        await until(lambda: set(runs) == set(bodies), "every message")
        await until_redis(lambda: held(redis_client, "shared"), [], "every ack")
    assert runs == Counter(bodies)


async def test_two_apps_on_one_queue_run_each_message_once(
    redis_url: str, redis_client: Redis
) -> None:
    runs: Counter[str] = Counter()
    handler = counting_handler(runs, "job")
    apps = [App(redis_url), App(redis_url)]
    for app in apps:
        app.task("shared", concurrency=2, batch=4, lease=1.0)(handler)
    bodies = [f"m{i}" for i in range(60)]
    async with apps[0], apps[1]:
        await apps[0].enqueue_many("shared", bodies)
        await until(lambda: set(runs) == set(bodies), "every message")
        await until_redis(lambda: held(redis_client, "shared"), [], "every ack")
    assert runs == Counter(bodies)


# refused writes -------------------------------------------------------------------------------
def rejecting_app(url: str, done: list[str]) -> App:
    """An app whose handler dead-letters the body "bad" and records every other one."""
    app = App(url)

    @app.task("jobs", concurrency=2, batch=5, lease=5.0)
    async def job(body: str) -> None:
        if body == "bad":
            raise Reject("no")
        done.append(body)

    return app


async def test_a_refused_dead_letter_holds_back_only_itself(
    redis_url: str, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[str] = []
    app = rejecting_app(redis_url, done)

    await redis_client.set("{jobs}:dead", "not a list")
    good = [f"g{i}" for i in range(40)]  # several times the pool's capacity (7)
    with caplog.at_level(logging.ERROR, logger="aioredq"):
        async with app:
            await app.enqueue("jobs", "bad")
            await app.enqueue_many("jobs", good)
            await until(lambda: sorted(done) == sorted(good), "every good job")
            # Every other ack is written: only the refused item stays held.
            await until_redis(
                lambda: held(redis_client, "jobs"), [_first_held_item()], "the other acks"
            )
            await redis_client.delete("{jobs}:dead")
            await until_redis(lambda: redis_client.llen("{jobs}:dead"), 1, "the dead letter")
            await until_redis(lambda: held(redis_client, "jobs"), [], "the refused item")
    [letter] = letters(await redis_client.lrange("{jobs}:dead", 0, -1))
    assert letter["error"] == "Reject: no"
    assert json.loads(letter["body"])["body"] == "bad"
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]  # logged once


class _AnyHeldItem:
    """Equal to a one-element processing list holding the envelope of ``bad``."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, bytes):
            return NotImplemented
        item = parse_task_item(other)
        return item.envelope is not None and item.envelope.get("body") == "bad"


def _first_held_item() -> Any:
    return _AnyHeldItem()


async def test_refused_outcomes_count_against_prefetch(redis_url: str, redis_client: Redis) -> None:
    app = App(redis_url)
    ran: list[str] = []

    @app.task("jobs", concurrency=2, batch=5, lease=5.0)
    async def job(body: str) -> None:
        ran.append(body)
        raise Reject("no")

    await redis_client.set("{jobs}:dead", "not a list")
    bodies = [f"b{i}" for i in range(60)]
    async with app:
        [consumer] = app._workers
        capacity = consumer.pool.capacity  # 2 + 2 x 5
        await app.enqueue_many("jobs", bodies)
        # Until the first refusal is seen, up to a capacity's worth of outcomes wait for their
        # write without taking room; from then on every one does, and fetching stops.
        await until(
            lambda: (
                consumer.refusing()
                and consumer.pool.outstanding == 0
                and consumer.pool.room < consumer.min_room
            ),
            "fetching to stop",
        )
        stopped_at = len(ran)
        assert 0 < stopped_at <= 2 * capacity  # memory stays bounded
        assert await redis_client.llen("jobs") == 60 - stopped_at
        await redis_client.delete("{jobs}:dead")
        await until(lambda: len(ran) == 60, "every job, once the key is fixed")
        await until_redis(lambda: redis_client.llen("{jobs}:dead"), 60, "every dead letter")
        await until_redis(lambda: held(redis_client, "jobs"), [], "nothing held")


async def test_a_dead_letter_denied_by_acl_holds_back_only_itself(
    redis_url: str, redis_client: Redis
) -> None:
    user = "aioredq-dead-denied"
    grants = [
        "on",
        ">pw",
        "resetkeys",
        "~jobs",
        "~{jobs}:processing:*",
        "~{jobs}:delayed",
        "~{jobs}:consumers",
        "~{jobs}:recovering",
        "~{jobs}:dead:*",
        "~{jobs}:paused",
        "~{jobs}:priority:*",
        "~{jobs}:rate",
        "~{jobs}:throttled",
        "+@all",
    ]
    await redis_client.execute_command("ACL", "SETUSER", user, "reset", *grants)
    try:
        done: list[str] = []
        app = rejecting_app(redis_url.replace("redis://", f"redis://{user}:pw@"), done)

        good = [f"g{i}" for i in range(30)]
        async with app:
            await app.enqueue("jobs", "bad")
            await app.enqueue_many("jobs", good)
            await until(lambda: sorted(done) == sorted(good), "every good job")
            await until_redis(lambda: held(redis_client, "jobs"), [_first_held_item()], "acks")
            await redis_client.execute_command("ACL", "SETUSER", user, "~{jobs}:dead")
            await until_redis(lambda: redis_client.llen("{jobs}:dead"), 1, "the dead letter")
            await until_redis(lambda: held(redis_client, "jobs"), [], "the refused item")
    finally:
        await redis_client.acl_deluser(user)


# wrong-typed keys: each script ----------------------------------------------------------------
async def test_fetch_with_a_wrong_typed_queue_keeps_due_delayed_items(redis_client: Redis) -> None:
    t = QueueTransport(redis_client, "jobs", "c1")
    items = [encode_envelope(f"d{i}", msg_id=f"id{i}") for i in range(5)]
    await redis_client.zadd("{jobs}:delayed", dict.fromkeys(items, 0))
    await redis_client.sadd("jobs", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await t.fetch(10, 60_000, "c1:1:", 10)
    assert await redis_client.zcard("{jobs}:delayed") == 5
    await redis_client.delete("jobs")
    got = await t.fetch(10, 60_000, "c1:2:", 10)
    assert sorted(parse_task_item(x).id for x in got.items) == [f"id{i}" for i in range(5)]


@pytest.mark.parametrize("key", ["{jobs}:processing:c1", "{jobs}:consumers"])
async def test_fetch_with_a_wrong_typed_key_takes_nothing(redis_client: Redis, key: str) -> None:
    t = QueueTransport(redis_client, "jobs", "c1")
    await redis_client.lpush("jobs", "a", "b")
    await redis_client.set(key, "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await t.fetch(10, 60_000, "c1:1:", 10)
    assert await redis_client.lrange("jobs", 0, -1) == [b"b", b"a"]
    await redis_client.delete(key)
    got = await t.fetch(10, 60_000, "c1:2:", 10)
    assert [parse_task_item(x).foreign for x in got.items] == [b"a", b"b"]


async def test_fetch_with_a_wrong_typed_delayed_set_still_takes_the_queue(
    redis_client: Redis,
) -> None:
    t = QueueTransport(redis_client, "jobs", "c1")
    await redis_client.lpush("jobs", "a")
    await redis_client.set("{jobs}:delayed", "x")
    got = await t.fetch(10, 60_000, "c1:1:", 10)
    assert [parse_task_item(x).foreign for x in got.items] == [b"a"]
    assert got.problem is not None and "{jobs}:delayed" in got.problem
    assert await redis_client.get("{jobs}:delayed") == b"x"


@pytest.mark.parametrize("key", ["{jobs}:delayed", "{jobs}:dead"])
async def test_settle_writes_what_it_can(redis_client: Redis, key: str) -> None:
    t = QueueTransport(redis_client, "jobs", "c1")
    await redis_client.lpush("jobs", "a", "b", "c")
    a, b, c = (await t.fetch(3, 60_000, "c1:1:", 3)).items
    await redis_client.set(key, "x")
    done = await t.settle([a], [(b, 1)], [(c, b"letter")])
    refused = b if key == "{jobs}:delayed" else c
    assert done.count == 2
    assert await t.held() == [refused]
    assert (done.retries_refused, done.dead_refused) == ((0, None) if refused is b else (None, 0))
    await redis_client.delete(key)
    again = (
        await t.settle([], [(b, 1)], []) if refused is b else await t.settle([], [], [(c, b"l")])
    )
    assert again.count == 1 and await t.held() == []


async def test_handback_and_recover_with_a_wrong_typed_queue_keep_everything(
    redis_client: Redis,
) -> None:
    t = QueueTransport(redis_client, "jobs", "c1")
    other = QueueTransport(redis_client, "jobs", "c2")
    await redis_client.lpush("jobs", "a", "b")
    got = (await t.fetch(2, 60_000, "c1:1:", 2)).items
    await redis_client.sadd("jobs", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await t.handback([(raw, raw) for raw in got])
    await redis_client.zadd("{jobs}:consumers", {"c1": 0})  # c1's lease ran out
    await other.heartbeat(60_000)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await other.recover("tok", 10_000)
    assert sorted(await t.held()) == sorted(got)
    assert not await redis_client.exists("{jobs}:recovering")  # the lock is not left behind
    await redis_client.delete("jobs")
    assert await other.recover("tok", 10_000) == 2
    assert [parse_task_item(x).foreign for x in await redis_client.lrange("jobs", 0, -1)] == [
        b"b",
        b"a",
    ]


async def test_enqueue_delayed_with_a_wrong_typed_set_is_refused_whole(
    redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url)
    await redis_client.set("{jobs}:delayed", "x")
    try:
        with pytest.raises(Exception, match="WRONGTYPE"):
            await app.enqueue_many("jobs", ["a", "b"], delay=5)
    finally:
        await app.aclose()
    assert await redis_client.get("{jobs}:delayed") == b"x"


# wrong-typed keys: end to end -----------------------------------------------------------------
async def test_retries_survive_a_wrong_typed_queue(redis_url: str, redis_client: Redis) -> None:
    app = App(redis_url)
    runs: Counter[str] = Counter()

    @app.task("jobs", concurrency=5, lease=5.0)
    async def job(body: str) -> None:
        runs[body] += 1
        if runs[body] == 1:
            raise Retry(delay=0.3)

    bodies = [f"r{i}" for i in range(5)]
    async with app:
        await app.enqueue_many("jobs", bodies)
        await until(lambda: sorted(runs) == bodies, "the first attempts")
        await until_redis(lambda: redis_client.zcard("{jobs}:delayed"), 5, "the retries")
        await redis_client.sadd("jobs", "x")  # the retries come due while the queue is a set
        [(_, due)] = await redis_client.zrange("{jobs}:delayed", -1, -1, withscores=True)
        await until_redis(lambda: _past(redis_client, due + 200), True, "the retries due")
        assert await redis_client.zcard("{jobs}:delayed") == 5  # none taken and lost
        await redis_client.delete("jobs")
        await until(lambda: runs == Counter(dict.fromkeys(bodies, 2)), "every retry")
        await until_redis(lambda: held(redis_client, "jobs"), [], "every ack")


async def _past(r: Redis, ms: float) -> bool:
    seconds, micros = await r.time()
    return int(seconds) * 1000 + int(micros) // 1000 > ms


async def test_shutdown_with_a_wrong_typed_queue_loses_no_unstarted_job(
    redis_url: str, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    ran: list[str] = []
    app = App(redis_url, shutdown_timeout=0.5)

    @app.task("jobs", concurrency=1, batch=20, lease=0.5)
    async def job(body: str) -> None:
        ran.append(body)
        await release.wait()

    bodies = [f"h{i}" for i in range(20)]
    await app.enqueue_many("jobs", bodies)
    await app.start()
    await until(lambda: len(ran) == 1, "the first job")
    await redis_client.sadd("jobs", "x")
    with caplog.at_level(logging.WARNING, logger="aioredq"):
        stopping = asyncio.create_task(app.stop())
        # The 19 unstarted jobs cannot go back to the queue: they stay in the processing
        # list, where the lease makes them recoverable, rather than be lost.
        await until(lambda: "gave up" in caplog.text, "the hand back to give up")
        assert len(await held(redis_client, "jobs")) == 20
        await redis_client.delete("jobs")
        await stopping
    await app.aclose()
    assert not release.is_set()
    after = App(redis_url)
    done: list[str] = []
    after.task("jobs", lease=0.5)(_appender(done))
    async with after:
        await until(lambda: sorted(done) == sorted(bodies), "the jobs, recovered")


def _appender(into: list[str]) -> Callable[[str], Awaitable[None]]:
    async def job(body: str) -> None:
        into.append(body)

    return job


# hostile input --------------------------------------------------------------------------------
@pytest.mark.parametrize("foreign", [True, False])
async def test_an_oversized_item_is_kept_aside_and_dead_lettered_once(
    redis_url: str, redis_client: Redis, foreign: bool
) -> None:
    app = App(redis_url, max_body_bytes=1000)
    ran: list[int] = []

    @app.task("jobs", lease=0.5)
    async def job(body: str) -> None:
        ran.append(len(body))

    item = b"\xff\x00" + b"x" * 3_000_000 if foreign else encode_envelope("y" * 5000, msg_id="big")
    async with app:
        await redis_client.lpush("jobs", item, "small")
        await until(lambda: ran == [5], "the small job")
        await until_redis(lambda: redis_client.llen("{jobs}:dead"), 1, "the dead letter")
        await asyncio.sleep(1.5)  # three leases: its own recovery must not run it again
        assert await redis_client.llen("{jobs}:dead") == 1
        assert await held(redis_client, "jobs") == []
    [letter] = letters(await redis_client.lrange("{jobs}:dead", 0, -1))
    assert letter["size"] == len(item)
    assert letter["error"].startswith(f"MessageTooLarge: item is {len(item)} bytes")
    assert "body" not in letter and "body_b64" not in letter
    assert letter["body_key"].startswith("{jobs}:dead:")
    assert await redis_client.get(letter["body_key"]) == item  # byte for byte
    if not foreign:
        assert letter["id"] == "big"
    assert ran == [5]


async def test_a_forged_envelope_is_dead_lettered_at_once(
    redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url)
    ran: list[str] = []

    @app.task("jobs", lease=0.5, max_attempts=3)
    async def job(body: str) -> None:
        ran.append(body)

    forged = b'{"aioredq":1,"attempts":0,garbage'
    async with app:
        await redis_client.lpush("jobs", forged)
        await until_redis(lambda: redis_client.llen("{jobs}:dead"), 1, "the dead letter")
        await until_redis(lambda: held(redis_client, "jobs"), [], "the ack")
    [letter] = letters(await redis_client.lrange("{jobs}:dead", 0, -1))
    assert letter["error"].startswith("InvalidEnvelope")
    assert letter["attempts"] == 1 and letter["id"]
    assert letter["body"].encode() == forged
    assert ran == []


async def test_a_forged_delivery_count_ends_in_dead_letters(
    redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url)

    @app.task("jobs", max_attempts=3)
    async def job(body: str) -> None:
        raise AssertionError("never runs")

    async with app:
        await redis_client.lpush("jobs", b'{"aioredq":1,"attempts":7,"id":"f","body":"x"}')
        await until_redis(lambda: redis_client.llen("{jobs}:dead"), 1, "the dead letter")
    [letter] = letters(await redis_client.lrange("{jobs}:dead", 0, -1))
    assert letter["error"].startswith("AttemptsExceeded")


# orphans and one's own work -------------------------------------------------------------------
async def test_an_orphaned_processing_list_is_recovered(
    redis_url: str, redis_client: Redis
) -> None:
    await redis_client.lpush("{jobs}:processing:gone", "o1", "o2", "o3")  # never registered
    app = App(redis_url)
    done: list[str] = []
    app.task("jobs", lease=0.5)(_appender(done))
    async with app:
        await until(lambda: sorted(done) == ["o1", "o2", "o3"], "the orphaned jobs")
    assert not await redis_client.exists("{jobs}:processing:gone")


async def test_a_live_consumer_whose_registration_was_deleted_keeps_its_work(
    redis_url: str, redis_client: Redis
) -> None:
    release = asyncio.Event()
    runs: Counter[str] = Counter()
    apps = [App(redis_url), App(redis_url)]
    for app in apps:

        @app.task("jobs", concurrency=1, batch=1, lease=0.5)
        async def job(body: str) -> None:
            runs[body] += 1
            await release.wait()

    async with apps[0]:
        await apps[0].enqueue("jobs", "slow")
        await until(lambda: runs["slow"] == 1, "the job")
        async with apps[1]:
            await redis_client.delete("{jobs}:consumers")
            await asyncio.sleep(2.0)  # four leases and several scans for orphans
            release.set()
            await until_redis(lambda: held(redis_client, "jobs"), [], "the ack")
    assert runs == Counter(slow=1)


async def test_recovery_never_moves_the_callers_own_list(redis_client: Redis) -> None:
    me = QueueTransport(redis_client, "jobs", "me")
    other = QueueTransport(redis_client, "jobs", "other")
    await redis_client.lpush("jobs", "a")
    await me.fetch(1, 60_000, "me:1:", 1)
    await redis_client.zadd("{jobs}:consumers", {"me": 0})  # my lease lapsed (an outage)
    assert await me.recover("tok", 10_000) == 0
    assert await me.recover_lists(["me"]) == 0
    assert len(await me.held()) == 1
    assert not await redis_client.exists("{jobs}:recovering")
    assert await me.heartbeat(60_000) is False  # registered again, keeping its list
    assert len(await me.held()) == 1
    await redis_client.zadd("{jobs}:consumers", {"me": 0})
    await other.heartbeat(60_000)
    assert await other.recover("tok", 10_000) == 1  # another consumer does take it
