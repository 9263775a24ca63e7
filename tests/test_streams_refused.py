"""Stream consumers under refused writes and several handlers on one group, against a real Redis.

Refused acks (an ACL that drops XACK), dead letters that cannot be written (a wrong-typed
``{s}:dead``) and Redis outages longer than the lease must neither run finished work again
nor let memory grow; two handlers or two apps on one group must run every entry once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio
import redis.asyncio
from _waiting import until, until_redis
from redis.exceptions import ResponseError

from aioredq import App, Message, Reject
from aioredq._transports.stream import DeadLetter, StreamTransport

LEASE = 0.5
# Several leases: long enough for a lease that lapsed to be noticed and its entries claimed.
QUIET = 4 * LEASE


async def pending(client: redis.asyncio.Redis, stream: str, group: str) -> int:
    return int((await client.xpending(stream, group))["pending"])


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest_asyncio.fixture
async def app_user(redis_url: str, redis_client: redis.asyncio.Redis) -> AsyncIterator[str]:
    """The URL of an ACL user allowed everything; the test narrows its rights with
    ``ACL SETUSER``. The user is deleted afterwards (ACLs outlive FLUSHALL)."""
    await redis_client.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all")
    try:
        yield _with_user(redis_url, "app", "pw")
    finally:
        await redis_client.execute_command("ACL", "DELUSER", "app")


async def test_refused_xack_runs_nothing_twice_and_flows_once_allowed(
    app_user: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(app_user)
    runs: Counter[str] = Counter()

    @app.stream("acl", group="g", lease=LEASE, concurrency=4)
    async def handle(body: dict[str, str], message: Message) -> None:
        runs[message.id] += 1

    with caplog.at_level(logging.WARNING, logger="aioredq"):
        async with app:
            await redis_client.execute_command("ACL", "SETUSER", "app", "-xack")
            ids = await app.append_many("acl", [{"n": str(n)} for n in range(20)])
            await until(lambda: len(runs) == 20, "every entry handled once")
            await asyncio.sleep(QUIET)  # leases lapse here unless the finished work is held
            assert await pending(redis_client, "acl", "g") == 20
            await redis_client.execute_command("ACL", "SETUSER", "app", "+xack")
            await until_redis(lambda: pending(redis_client, "acl", "g"), 0, "acks written")
    assert runs == {i: 1 for i in ids}
    refused = [r for r in caplog.records if "acks: failing" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert not [r for r in caplog.records if "silent consumers" in r.getMessage()]


@pytest.mark.parametrize("outage", ["paused", "restarted"])
async def test_outage_longer_than_the_lease_runs_nothing_twice(
    redis_server_factory: Any, outage: str
) -> None:
    server = redis_server_factory(appendonly=True)  # a restart keeps the pending entries
    app = App(server.url)
    runs: Counter[str] = Counter()
    release = asyncio.Event()

    @app.stream("outage", group="g", lease=LEASE, concurrency=10)
    async def handle(body: dict[str, str], message: Message) -> None:
        runs[message.id] += 1
        await release.wait()

    client = redis.asyncio.Redis.from_url(server.url)
    try:
        async with app:
            ids = await app.append_many("outage", [{"n": str(n)} for n in range(20)])
            await until(lambda: len(runs) == 10, "ten entries running")
            # Unreachable for several leases while the handlers finish: their entries are
            # idle far past the lease when Redis is back, and only their acks are missing.
            if outage == "paused":
                server.pause()
            else:
                server.stop()
            release.set()
            await asyncio.sleep(QUIET)
            if outage == "paused":
                server.resume()
            else:
                server.start()
            await until(lambda: len(runs) == 20, "every entry handled")
            await until_redis(lambda: pending(client, "outage", "g"), 0, "every entry acked")
    finally:
        await client.aclose()
    assert runs == {i: 1 for i in ids}


async def test_unwritable_dead_letters_wait_while_acks_go_on(
    redis_url: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await redis_client.set("{dl}:dead", "not a stream")
    app = App(redis_url)
    runs: Counter[str] = Counter()

    @app.stream("dl", group="g", lease=LEASE, concurrency=2, batch=2)
    async def handle(body: dict[str, str], message: Message) -> None:
        runs[message.id] += 1
        if body["n"] == "bad":
            raise Reject("bad entry")

    with caplog.at_level(logging.WARNING, logger="aioredq"):
        async with app:
            bad = await app.append("dl", {"n": "bad"})
            good = await app.append_many("dl", [{"n": str(n)} for n in range(30)])
            # Every good entry is acked; the refused dead letter stays pending and ours.
            await until(lambda: all(runs[i] for i in good), "good entries handled")
            await until_redis(lambda: pending(redis_client, "dl", "g"), 1, "good entries acked")
            await asyncio.sleep(QUIET)
            rows = await redis_client.xpending_range("dl", "g", "-", "+", 10)
            assert [r["message_id"].decode() for r in rows] == [bad]
            await redis_client.delete("{dl}:dead")
            await until_redis(lambda: pending(redis_client, "dl", "g"), 0, "dead letter written")
    assert runs == {i: 1 for i in [bad, *good]}
    letters = await redis_client.xrange("{dl}:dead")
    assert len(letters) == 1
    assert letters[0][1][b"original_id"] == bad.encode()
    refused = [r for r in caplog.records if "refused a dead letter" in r.getMessage()]
    assert len(refused) == 1
    assert any("written again" in r.getMessage() for r in caplog.records)


async def test_refused_acks_bound_what_the_consumer_takes(
    app_user: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(app_user)
    runs: Counter[str] = Counter()

    @app.stream("bounded", group="g", lease=LEASE, concurrency=2, batch=3)
    async def handle(body: dict[str, str], message: Message) -> None:
        runs[message.id] += 1

    async with app:
        await redis_client.execute_command("ACL", "SETUSER", "app", "-xack")
        [consumer] = app._workers
        capacity = consumer.pool.capacity  # 2 + 2 x 3
        ids = await app.append_many("bounded", [{"n": str(n)} for n in range(40)])
        # Once an ack is seen refused, the finished entries waiting for their acks fill the
        # pool's room: the consumer takes nothing more until they are written (before that,
        # up to a capacity's worth wait without taking room).
        await until(
            lambda: consumer.pool.unsettled_free == 0 and consumer.pool.outstanding == 0,
            "acks seen refused",
        )
        await asyncio.sleep(QUIET)
        stopped_at = len(runs)
        assert 0 < stopped_at <= 2 * capacity
        assert await pending(redis_client, "bounded", "g") == stopped_at
        await redis_client.execute_command("ACL", "SETUSER", "app", "+xack")
        await until(lambda: len(runs) == 40, "every entry handled")
        await until_redis(lambda: pending(redis_client, "bounded", "g"), 0, "every entry acked")
    assert runs == {i: 1 for i in ids}


# several handlers on one group ------------------------------------------------------------------
async def test_two_handlers_in_one_app_on_one_group_run_each_entry_once(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    runs: Counter[str] = Counter()
    by: Counter[str] = Counter()

    @app.stream("shared", group="g", lease=LEASE, concurrency=4)
    async def first(body: dict[str, str], message: Message) -> None:
        runs[message.id] += 1
        by["first"] += 1
        await asyncio.sleep(0.01)

    @app.stream("shared", group="g", lease=LEASE, concurrency=4)
    async def second(body: dict[str, str], message: Message) -> None:
        runs[message.id] += 1
        by["second"] += 1
        await asyncio.sleep(0.01)

    async with app:
        # Several times what one consumer may hold (4 + 2 x 100), so both take part.
        ids = await app.append_many("shared", [{"n": str(n)} for n in range(600)])
        await until(lambda: len(runs) == 600, "every entry handled")
        await until_redis(lambda: pending(redis_client, "shared", "g"), 0, "every entry acked")
        await asyncio.sleep(QUIET)  # a lapsed lease or a stray adoption would run one again
    assert runs == {i: 1 for i in ids}
    assert set(by) == {"first", "second"}  # both took part


async def test_two_apps_on_one_group_run_each_entry_once(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    runs: Counter[str] = Counter()
    apps = [App(redis_url), App(redis_url)]
    for app in apps:

        @app.stream("two", group="g", lease=LEASE, concurrency=4)
        async def handle(body: dict[str, str], message: Message) -> None:
            runs[message.id] += 1
            await asyncio.sleep(0.01)

    async with apps[0], apps[1]:
        ids = await apps[0].append_many("two", [{"n": str(n)} for n in range(200)])
        await until(lambda: len(runs) == 200, "every entry handled")
        await until_redis(lambda: pending(redis_client, "two", "g"), 0, "every entry acked")
        await asyncio.sleep(QUIET)
    assert runs == {i: 1 for i in ids}


# batch producing --------------------------------------------------------------------------------
async def test_append_many_refused_by_maxmemory_writes_nothing(fresh_redis: Any) -> None:
    client = redis.asyncio.Redis.from_url(fresh_redis.url)
    app = App(fresh_redis.url)
    try:
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", used + 200_000)
        bodies = [{"n": str(n), "pad": "x" * 1000} for n in range(2000)]  # ~2 MB
        with pytest.raises(Exception, match="maxmemory"):
            await app.append_many("oom", bodies)
        assert await client.xlen("oom") == 0  # not a prefix of the batch: a retry is safe
        await client.config_set("maxmemory", 0)
        ids = await app.append_many("oom", bodies)
        assert len(ids) == 2000 and await client.xlen("oom") == 2000
    finally:
        await app.aclose()
        await client.aclose()


async def test_append_many_on_memory_is_all_or_nothing_too() -> None:
    app = App("memory://")
    try:
        ids = await app.append_many("mem", [{"n": str(n)} for n in range(5)])
        assert len(ids) == 5
        # One MULTI/EXEC on fakeredis as well.
        rows = await app.connection.command.xrange("mem")
        assert [i.decode() for i, _ in rows] == ids
    finally:
        await app.aclose()


# the dead-letter script refuses before it writes ----------------------------------------------
async def _one_pending(client: redis.asyncio.Redis, transport: StreamTransport) -> DeadLetter:
    await client.xgroup_create("d", "g", "$", mkstream=True)
    await client.xadd("d", {"n": "1"})
    (entry,) = await transport.read_group(1, None)
    return DeadLetter(entry.id, "Reject: no", 1, "now", '{"n": "1"}', 2)


async def test_dead_letter_refused_by_acl_or_maxmemory_writes_nothing(
    app_user: str, redis_client: redis.asyncio.Redis, fresh_redis: Any
) -> None:
    # XADD allowed, XACK refused: without the check first, the letter would be written and
    # the entry left pending, to be dead-lettered again.
    user = redis.asyncio.Redis.from_url(app_user)
    try:
        transport = StreamTransport(user, "d", "g", "me")
        letter = await _one_pending(redis_client, transport)
        await redis_client.execute_command("ACL", "SETUSER", "app", "-xack")
        with pytest.raises(ResponseError, match="may not XACK"):
            await transport.dead_letter(letter)
        assert await redis_client.exists("{d}:dead") == 0
        assert await pending(redis_client, "d", "g") == 1
        await redis_client.execute_command("ACL", "SETUSER", "app", "+xack")
        await transport.dead_letter(letter)
        assert (
            await redis_client.xlen("{d}:dead") == 1 and await pending(redis_client, "d", "g") == 0
        )
    finally:
        await user.aclose()

    own = redis.asyncio.Redis.from_url(fresh_redis.url)
    try:
        transport = StreamTransport(own, "d", "g", "me")
        letter = await _one_pending(own, transport)
        await own.config_set("maxmemory-policy", "noeviction")
        await own.config_set("maxmemory", 1)
        with pytest.raises(ResponseError, match=r"OOM|maxmemory"):
            await transport.dead_letter(letter)
        await own.config_set("maxmemory", 0)
        assert await own.exists("{d}:dead") == 0 and await pending(own, "d", "g") == 1
        await transport.dead_letter(letter)
        assert await own.xlen("{d}:dead") == 1 and await pending(own, "d", "g") == 0
    finally:
        await own.aclose()
