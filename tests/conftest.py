"""Real Redis for the test suite: servers and clusters started (and stopped) by the suite.

By default the suite starts its own ``redis-server`` on a free port and never touches any other
server. Set ``AIOREDQ_TEST_URL`` to run against a server you provide instead: its database is
flushed before each test (the run stops at once if, at session start, that database holds keys
or other programs are connected to the server), and tests that restart or kill the shared server
skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis
import redis.asyncio
from _servers import ClusterFactory, ExternalRedis, LocalCluster, RedisServer, ServerFactory

TEST_URL_ENV = "AIOREDQ_TEST_URL"


def _refuse_busy_server(url: str) -> None:
    """The suite flushes the database it is given: stop before it wipes someone's data."""
    with redis.Redis.from_url(url) as client:
        keys = client.dbsize()
        clients = int(client.info("clients")["connected_clients"])
    problem = None
    if keys:
        problem = f"its database holds {keys} keys"
    elif clients > 1:
        problem = f"other programs are connected to it ({clients - 1} connections)"
    if problem:
        pytest.exit(
            f"{TEST_URL_ENV}={url}: {problem}. The suite flushes that database before every"
            " test; point it at an empty database on a Redis server used only by the tests",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | ExternalRedis]:
    """The session's shared server (``.url``, ``.managed``); use ``redis_url`` in tests."""
    external_url = os.environ.get(TEST_URL_ENV)
    if external_url:
        _refuse_busy_server(external_url)
        yield ExternalRedis(external_url)
        return
    with RedisServer() as server:
        yield server


@pytest.fixture
def managed_redis_server(redis_server: RedisServer | ExternalRedis) -> RedisServer:
    """The shared server, for tests that restart/kill/pause it; skips with AIOREDQ_TEST_URL."""
    if not isinstance(redis_server, RedisServer):
        pytest.skip(f"needs a redis-server started by the suite; {TEST_URL_ENV} is set")
    return redis_server


@pytest.fixture
def redis_url(redis_server: RedisServer | ExternalRedis) -> Iterator[str]:
    """URL of an empty database on the shared server."""
    if isinstance(redis_server, RedisServer):
        # Heal what an earlier test may have done to the shared server.
        if not redis_server.running:
            redis_server.start()
        redis_server.resume()
        with redis.Redis.from_url(redis_server.url) as client:
            client.flushall()
            client.script_flush()
        yield redis_server.url
        return
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    yield redis_server.url
    # Leave the user's database empty, as found, so the next run's emptiness check passes.
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis-py client on ``redis_url``, for tests to act as a foreign program."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_server_factory() -> Iterator[ServerFactory]:
    """``factory(appendonly=False, extra_args=None)`` -> a started RedisServer of the test's
    own; all of them are stopped (and their dirs removed) after the test."""
    if shutil.which("redis-server") is None and os.environ.get(TEST_URL_ENV):
        pytest.skip(f"needs its own redis-server, which is not on PATH ({TEST_URL_ENV} is set)")
    servers: list[RedisServer] = []

    def factory(*, appendonly: bool = False, extra_args: list[str] | None = None) -> RedisServer:
        server = RedisServer(appendonly=appendonly, extra_args=extra_args)
        servers.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def fresh_redis(redis_server_factory: ServerFactory) -> RedisServer:
    """A redis-server started for this test only, free to restart, kill or reconfigure."""
    return redis_server_factory()


def _skip_without_cluster_tools() -> None:
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"Redis Cluster tests need {' and '.join(missing)} (Redis 7+) on PATH")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A 3-master cluster shared by the session; ``.url`` is ``redis+cluster://...``."""
    _skip_without_cluster_tools()
    with LocalCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_factory() -> Iterator[ClusterFactory]:
    """``factory(masters=3, replicas=0)`` -> a started LocalCluster of the test's own (e.g. to
    kill a master and watch the failover); all are stopped after the test."""
    _skip_without_cluster_tools()
    clusters: list[LocalCluster] = []

    def factory(masters: int = 3, replicas: int = 0) -> LocalCluster:
        cluster = LocalCluster(masters=masters, replicas=replicas)
        clusters.append(cluster)
        cluster.start()
        return cluster

    try:
        yield factory
    finally:
        for cluster in clusters:
            cluster.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client on the test database, acting as a foreign program."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
