"""Producing under a web server's load: any number of concurrent calls wait for one of the
app's ``max_connections`` connections instead of failing, for at most ``pool_timeout``."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import redis.asyncio
from _servers import ServerFactory
from _waiting import until_redis

from aioredq import App, ConnectError

BURST = 10_000


@pytest.fixture(params=["redis", "unix", "memory"])
def any_url(request: pytest.FixtureRequest, redis_server_factory: ServerFactory) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    if request.param == "redis":
        yield redis_server_factory().url
        return
    folder = tempfile.mkdtemp(prefix="aioredq-sock-")
    socket = f"{folder}/redis.sock"
    try:
        redis_server_factory(extra_args=["--unixsocket", socket, "--unixsocketperm", "700"])
        yield f"unix://{socket}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_ten_thousand_concurrent_producers_all_succeed(any_url: str) -> None:
    """10,000 concurrent coroutines on one app, a third each enqueueing, appending and
    publishing, all at once: each waits its turn, none fails."""
    app = App(any_url, max_connections=20)

    async def produce(i: int) -> str | int:
        if i % 3 == 0:
            return await app.enqueue("jobs", {"n": i})
        if i % 3 == 1:
            return await app.append("events", {"n": i})
        return await app.publish("news", str(i))

    try:
        results = await asyncio.gather(*(produce(i) for i in range(BURST)))
        ids = {r for i, r in enumerate(results) if i % 3 == 0}
        entries = {r for i, r in enumerate(results) if i % 3 == 1}
        received = [r for i, r in enumerate(results) if i % 3 == 2]
        enqueued, appended = len(range(0, BURST, 3)), len(range(1, BURST, 3))
        assert len(ids) == enqueued and len(entries) == appended
        assert received == [0] * len(range(2, BURST, 3))  # nobody listens; all went through
        client = app.connection.command
        assert await client.llen("jobs") == enqueued
        assert await client.xlen("events") == appended
        if not any_url.startswith("memory"):
            # The bound held: 20 producing connections at most (the burst is over, so every
            # connection the app opened is idle in its pool now).
            clients = await client.client_list()
            assert len(clients) <= 20 + 1, clients  # + the connection asking
    finally:
        await app.aclose()


async def test_a_producer_waits_at_most_pool_timeout_then_says_why(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url, max_connections=1, pool_timeout=0.3)
    await redis_client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        first = asyncio.ensure_future(app.enqueue("jobs", "first"))
        # The first call holds the only connection (its LPUSH waits on the paused server).
        await until_redis(lambda: _count(redis_client), 2, "the first producer's connection")
        with pytest.raises(ConnectError, match=r"waited 0\.3 s .* 1 producing connections"):
            await app.enqueue("jobs", "second")
        await redis_client.execute_command("CLIENT", "UNPAUSE")
        assert await first
        assert await redis_client.lrange("jobs", 0, -1) == [await _only(redis_client)]
    finally:
        await redis_client.execute_command("CLIENT", "UNPAUSE")
        await app.aclose()


async def _count(client: redis.asyncio.Redis) -> int:
    return len(await client.client_list())


async def _only(client: redis.asyncio.Redis) -> bytes:
    [item] = await client.lrange("jobs", 0, -1)
    assert b"first" in item
    return bytes(item)
