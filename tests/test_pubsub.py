"""Pub/sub (``@app.subscribe``) against real redis-servers started by the suite.

Every test here can fail: subscribers that open a connection per handler, stop reading while a
handler is slow, lose a subscription kind on reconnect or die on a handler exception are each
caught by one of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import redis.asyncio.connection
from _servers import LocalCluster, RedisServer, ServerFactory
from pydantic import BaseModel

from aioredq import App, Message

WAIT = 20.0
ROOT = Path(__file__).resolve().parent.parent


class Order(BaseModel):
    id: int
    item: str


async def until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = WAIT
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


async def pubsub_clients(client: redis.asyncio.Redis) -> list[dict[str, str]]:
    """CLIENT LIST TYPE pubsub, one dict per subscribed connection."""
    reply = await client.execute_command("CLIENT LIST TYPE pubsub")
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return [_fields(line) for line in text.splitlines() if line.strip()]


async def numsub(client: redis.asyncio.Redis, channel: str, *, sharded: bool = False) -> int:
    reply = await (client.pubsub_shardnumsub if sharded else client.pubsub_numsub)(channel)
    return int(dict(reply)[channel.encode()])


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "unavailable" in r.getMessage()
    ]


@pytest.fixture
async def server_client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[RedisServer], redis.asyncio.Redis]]:
    """``connect(server)`` -> a plain client on a server the test started (closed after)."""
    clients: list[redis.asyncio.Redis] = []

    def connect(server: RedisServer) -> redis.asyncio.Redis:
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=None)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.aclose()


# one connection, fan-out, patterns, shards, bodies ------------------------------------------
async def test_one_connection_serves_every_subscription(
    redis_url: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(redis_url)
    got: dict[str, list[Any]] = {}

    def note(name: str, value: Any) -> None:
        got.setdefault(name, []).append(value)

    @app.subscribe("news")
    async def first(text: str) -> None:
        note("first", text)

    @app.subscribe("news", "other")
    async def second(text: str, message: Message) -> None:
        note("second", (message.channel, text))

    @app.subscribe(pattern="mail-*")
    async def mail(body: dict[str, Any], message: Message) -> None:
        note("mail", (message.name, message.pattern, message.channel, body))

    @app.subscribe("orders", sharded=True)
    async def orders(order: Order, message: Message) -> None:
        note("orders", (message.channel, order))

    @app.subscribe("raw")
    async def raw(data: bytes) -> None:
        note("raw", data)

    async with app:
        # One connection for all of them: two handlers on "news" still count once.
        clients = await pubsub_clients(redis_client)
        assert len(clients) == 1, clients
        assert clients[0]["sub"] == "3"  # news, other, raw
        assert clients[0]["psub"] == "1"
        assert clients[0]["ssub"] == "1"
        assert await numsub(redis_client, "news") == 1
        assert await numsub(redis_client, "orders", sharded=True) == 1

        # Fan-out: each handler on the channel gets every message.
        assert await app.publish("news", "one") == 1
        assert await app.publish_many("news", ["two", '"three"', '{"four": 4}']) == 3
        assert await app.publish("other", "elsewhere") == 1
        await until(lambda: len(got.get("first", [])) == 4, "4 messages in the first handler")
        await until(lambda: len(got.get("second", [])) == 5, "5 messages in the second handler")
        # A str handler gets the published text unchanged, JSON-looking or not.
        assert got["first"] == ["one", "two", '"three"', '{"four": 4}']
        assert ("other", "elsewhere") in got["second"]

        # A pattern handler learns the real channel.
        await redis_client.publish("mail-eu", b'{"to": "a@b.c"}')
        await until(lambda: "mail" in got, "the pattern handler")
        assert got["mail"] == [("mail-*", "mail-*", "mail-eu", {"to": "a@b.c"})]

        # Sharded: the handler-bound publish uses SPUBLISH; a plain PUBLISH reaches nobody.
        assert await app.publish("orders", Order(id=1, item="x")) == 0
        assert await orders.publish(Order(id=2, item="y")) == 1
        assert await app.publish("orders", {"id": 3, "item": "z"}, sharded=True) == 1
        await until(lambda: len(got.get("orders", [])) == 2, "2 sharded messages")
        assert got["orders"] == [
            ("orders", Order(id=2, item="y")),
            ("orders", Order(id=3, item="z")),
        ]

        # Bytes travel raw; a body that fails validation is logged and the handler goes on.
        await redis_client.publish("raw", b"\xff\x00binary")
        await redis_client.spublish("orders", b'{"id": "not a number"}')
        await redis_client.spublish("orders", b'{"id": 4, "item": "w"}')
        await until(lambda: len(got.get("orders", [])) == 3, "the valid order after a bad one")
        await until(lambda: "raw" in got, "the bytes handler")
        assert got["raw"] == [b"\xff\x00binary"]
        stats = app.stats()
        assert stats["orders"].failed == 1 and stats["orders"].succeeded == 3
        assert stats["first"].received == 4 and stats["first"].dropped == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "channel=orders" in errors[0] and "ValidationError" in errors[0]
    assert await pubsub_clients(redis_client) == []  # the connection is closed on stop


async def test_publish_many_is_one_round_trip(
    redis_url: str, redis_client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("c")
    await pubsub.ssubscribe("s")
    writes = 0
    original = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal writes
        writes += 1
        await original(self, command, check_health)

    app = App(redis_url)
    try:
        await app.connect()  # the connection handshake is not part of the count
        monkeypatch.setattr(
            redis.asyncio.connection.AbstractConnection, "send_packed_command", counting
        )
        assert await app.publish_many("c", [f"m{i}" for i in range(200)]) == 200
        assert writes == 1
        assert await app.publish_many("s", ["a", "b"], sharded=True) == 2
        assert writes == 2
        assert await app.publish_many("c", []) == 0
        assert writes == 2
    finally:
        monkeypatch.undo()
        await app.aclose()
        await pubsub.aclose()


# slow handlers ------------------------------------------------------------------------------
async def test_slow_handler_drops_oldest_and_the_connection_survives(
    redis_server_factory: ServerFactory,
    server_client: Callable[[RedisServer], redis.asyncio.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server that disconnects a subscriber as soon as 256 kB of output waits for it.
    server = redis_server_factory(
        extra_args=["--client-output-buffer-limit", "pubsub 256kb 128kb 1"]
    )
    client = server_client(server)
    total = 50_000
    padding = "x" * 300
    app = App(server.url)
    fast_seen: list[int] = []
    slow_seen: list[int] = []

    @app.subscribe("live", buffer=100)
    async def slow(text: str) -> None:
        slow_seen.append(int(text.split(":", 1)[0]))
        await asyncio.sleep(0.005)

    @app.subscribe("live", buffer=1000)
    async def fast(text: str) -> None:
        fast_seen.append(int(text.split(":", 1)[0]))

    async with app:
        [before] = await pubsub_clients(client)
        # Pipelined at full speed, in batches whose output (~165 kB) stays under the hard
        # limit even if none of it has been read yet.
        for start in range(0, total, 500):
            pipe = client.pipeline(transaction=False)
            for n in range(start, start + 500):
                pipe.publish("live", f"{n}:{padding}")
            assert sum(await pipe.execute()) == 500  # still subscribed: every one delivered
        await until(lambda: len(fast_seen) == total, "every message in the fast handler")
        assert fast_seen == list(range(total))
        # The slow handler keeps the newest messages: it ends on the last `buffer` of them.
        await until(lambda: slow_seen[-1:] == [total - 1], "the newest message, slow handler")
        assert slow_seen[-100:] == list(range(total - 100, total))
        [after] = await pubsub_clients(client)
        assert after["id"] == before["id"]  # never disconnected, never reconnected
    stats = app.stats()  # after the stop, which lets the last call finish
    assert stats["fast"].dropped == 0 and stats["fast"].succeeded == total
    assert stats["slow"].received == total
    assert stats["slow"].dropped > 0
    assert stats["slow"].dropped + stats["slow"].succeeded == total
    assert len(slow_seen) == stats["slow"].succeeded
    assert outage_warnings(caplog) == []
    drop_logs = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert 1 <= len(drop_logs) <= 10  # at most every few seconds, not per message


async def test_a_handler_that_keeps_up_loses_nothing_in_a_burst(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    # A burst arrives faster than it is read, so many messages sit parsed in the client at
    # once; a reader that never let the handler run would overflow its small buffer.
    app = App(redis_url)
    seen: list[int] = []

    @app.subscribe("burst", buffer=10)
    async def counter(n: int) -> None:
        seen.append(n)

    total = 20_000
    async with app:
        pipe = redis_client.pipeline(transaction=False)
        for n in range(total):
            pipe.publish("burst", str(n))
        assert sum(await pipe.execute()) == total
        await until(lambda: len(seen) + app.stats()["counter"].dropped >= total, "the burst")
    assert app.stats()["counter"].dropped == 0
    assert seen == list(range(total))


# reconnecting -------------------------------------------------------------------------------
def _reconnect_app(url: str, got: dict[str, list[str]]) -> App:
    app = App(url)

    @app.subscribe("plain")
    async def plain(text: str) -> None:
        got.setdefault("plain", []).append(text)

    @app.subscribe(pattern="pat-*")
    async def pattern(text: str, message: Message) -> None:
        got.setdefault("pattern", []).append(f"{message.channel}:{text}")

    @app.subscribe("shard", sharded=True)
    async def shard(text: str) -> None:
        got.setdefault("shard", []).append(text)

    return app


async def _everything_arrives(client: redis.asyncio.Redis, got: dict[str, list[str]]) -> None:
    """Publish on every kind until each handler has a message from this round."""
    got.clear()

    async def delivered() -> bool:
        try:
            if "plain" not in got:
                await client.publish("plain", "p")
            if "pattern" not in got:
                await client.publish("pat-1", "q")
            if "shard" not in got:
                await client.spublish("shard", "s")
        except redis.ConnectionError:
            pass  # this client's own connection did not survive the restart: try again
        await asyncio.sleep(0.05)
        return {"plain", "pattern", "shard"} <= set(got)

    await until(delivered, "a message on every channel, pattern and shard channel")
    assert got["pattern"][0] == "pat-1:q"


async def test_resubscribes_everything_after_client_kill(
    redis_server_factory: ServerFactory,
    server_client: Callable[[RedisServer], redis.asyncio.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory()
    client = server_client(server)
    got: dict[str, list[str]] = {}
    async with _reconnect_app(server.url, got) as app:
        await _everything_arrives(client, got)
        [before] = await pubsub_clients(client)
        for _ in range(2):
            assert await client.execute_command("CLIENT KILL TYPE pubsub") == 1
            await _everything_arrives(client, got)
        [after] = await pubsub_clients(client)
        assert after["id"] != before["id"]
        assert (after["sub"], after["psub"], after["ssub"]) == ("1", "1", "1")
        assert app.stats()["plain"].failed == 0
    assert len(outage_warnings(caplog)) <= 2  # at most one per outage


async def test_resubscribes_everything_after_a_server_restart(
    redis_server_factory: ServerFactory,
    server_client: Callable[[RedisServer], redis.asyncio.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory()
    client = server_client(server)
    got: dict[str, list[str]] = {}
    async with _reconnect_app(server.url, got):
        await _everything_arrives(client, got)
        server.stop()
        await until(lambda: len(outage_warnings(caplog)) == 1, "the outage warning")
        await asyncio.sleep(2.0)  # several reconnect attempts while the server is down
        server.start()
        await _everything_arrives(client, got)
        [after] = await pubsub_clients(client)
        assert (after["sub"], after["psub"], after["ssub"]) == ("1", "1", "1")
    assert len(outage_warnings(caplog)) == 1  # one warning per outage, not one per attempt
    back = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(back) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_stops_promptly_while_redis_is_down(
    redis_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    got: dict[str, list[str]] = {}
    app = _reconnect_app(server.url, got)
    await app.start()
    try:
        server.stop()
        await until(lambda: len(outage_warnings(caplog)) == 1, "the outage warning")
    finally:
        await asyncio.wait_for(app.aclose(), WAIT)  # not stuck reconnecting


# handler failures and stopping --------------------------------------------------------------
async def test_handler_exception_is_logged_and_the_subscription_continues(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(redis_url)
    done: list[str] = []

    @app.subscribe(pattern="alerts.*")
    async def alert(text: str) -> None:
        if text == "boom":
            raise RuntimeError("handler blew up")
        done.append(text)

    async with app:
        await app.publish("alerts.disk", "boom")
        await app.publish("alerts.cpu", "after")
        await until(lambda: done == ["after"], "the message after the failure")
        assert app.stats()["alert"].failed == 1
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "channel=alerts.disk" in error and "RuntimeError: handler blew up" in error


async def test_stop_lets_in_flight_calls_finish(redis_url: str) -> None:
    app = App(redis_url, shutdown_timeout=10.0)
    started = asyncio.Event()
    finished: list[str] = []

    @app.subscribe("work", concurrency=2)
    async def work(text: str) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.append(text)

    async with app:
        await app.publish("work", "in flight")
        await asyncio.wait_for(started.wait(), WAIT)
    assert finished == ["in flight"]
    assert app.stats()["work"].succeeded == 1


async def test_stop_cancels_calls_that_outlive_shutdown_timeout(redis_url: str) -> None:
    app = App(redis_url, shutdown_timeout=0.2)
    started = asyncio.Event()
    finished: list[str] = []

    @app.subscribe("work")
    async def work(text: str) -> None:
        started.set()
        await asyncio.sleep(60)
        finished.append(text)

    await app.start()
    try:
        await app.publish("work", "stuck")
        await asyncio.wait_for(started.wait(), WAIT)
    finally:
        # Bounded by shutdown_timeout, not by the handler's 60 s.
        await asyncio.wait_for(app.aclose(), WAIT)
    assert finished == []


async def test_an_idle_subscriber_stops_promptly(redis_url: str) -> None:
    app = App(redis_url)

    @app.subscribe("quiet")
    async def quiet(text: str) -> None:
        pass

    await app.start()
    await asyncio.wait_for(app.aclose(), WAIT)  # the stop does not hang on an idle read


# memory:// ----------------------------------------------------------------------------------
async def test_memory_backend_pubsub() -> None:
    app = App("memory://")
    got: list[tuple[str, str]] = []

    @app.subscribe("notice")
    async def notice(text: str, message: Message) -> None:
        got.append((message.channel, text))

    @app.subscribe(pattern="n*")
    async def starred(text: str, message: Message) -> None:
        got.append(("pattern " + message.channel, text))

    @app.subscribe("orders", sharded=True)
    async def orders(text: str, message: Message) -> None:
        got.append((message.channel, text))

    async with app:
        assert await app.publish("notice", "hello") == 2
        assert await orders.publish("o") == 1
        await until(lambda: len(got) == 3, "3 messages on memory://")
    assert sorted(got) == [("notice", "hello"), ("orders", "o"), ("pattern notice", "hello")]


def test_quickstart_runs_on_memory() -> None:
    env = {k: v for k, v in os.environ.items() if k != "AIOREDQ_URL"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "subscribe  notice       <- 'deploying at 10:00'" in done.stdout
    assert "subscribe  notice       <- 'deployed'" in done.stdout


# cluster ------------------------------------------------------------------------------------
@pytest.mark.cluster
async def test_cluster_channels_patterns_and_shards(redis_cluster: LocalCluster) -> None:
    shards = ["orders-1", "orders-2", "orders-3", "orders-4"]
    app = App(redis_cluster.url)
    got: dict[str, list[str]] = {}

    @app.subscribe("notice")
    async def notice(text: str) -> None:
        got.setdefault("notice", []).append(text)

    @app.subscribe(pattern="mail-*")
    async def mail(text: str, message: Message) -> None:
        got.setdefault("mail", []).append(message.channel)

    @app.subscribe(*shards, sharded=True)
    async def orders(text: str, message: Message) -> None:
        got.setdefault("orders", []).append(message.channel)

    @app.subscribe("orders-1", sharded=True)
    async def one_order(text: str) -> None:
        got.setdefault("one", []).append(text)

    async def publish_everything() -> None:
        got.clear()

        async def delivered() -> bool:
            try:
                if "notice" not in got:
                    await app.publish("notice", "hello")
                if "mail" not in got:
                    await app.publish("mail-x", "hi")
                if len(got.get("orders", [])) < len(shards):
                    got.pop("orders", None)
                    got.pop("one", None)
                    for shard in shards[1:]:
                        await app.publish(shard, "o", sharded=True)
                    await one_order.publish("first")
            except Exception:  # a node's connection did not survive CLIENT KILL: again
                pass
            await asyncio.sleep(0.2)
            return (
                got.get("notice", [])[:1] == ["hello"]
                and got.get("mail", [])[:1] == ["mail-x"]
                and sorted(set(got.get("orders", []))) == shards
                and "first" in got.get("one", [])
            )

        await until(delivered, "every kind of message on the cluster", timeout=30)

    async with app:
        owners = {redis_cluster.master_for_key(s).port for s in shards}
        assert len(owners) > 1  # the shard channels live on several nodes
        await publish_everything()
        assert await app.publish_many("orders-2", ["a", "b"], sharded=True) == 2
        # PUBLISH reaches subscribers on every node, though it counts only the local ones.
        got.clear()
        await app.publish_many("notice", ["x", "y"])
        await until(lambda: got.get("notice") == ["x", "y"], "a batch published on a cluster")
        for port in redis_cluster.ports:
            client = redis.asyncio.Redis(port=port)
            try:
                await client.execute_command("CLIENT KILL TYPE pubsub")
            finally:
                await client.aclose()
        await publish_everything()
