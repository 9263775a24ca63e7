"""The test suite's own Redis fixtures do what the other tests rely on."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
from _servers import ClusterFactory, ExternalRedis, LocalCluster, RedisServer, ServerFactory, call
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry


def _client(server: RedisServer) -> redis.Redis:
    # No retries: a dead server must fail at once, not after redis-py's 10 backed-off attempts.
    return redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 0), socket_timeout=1)


@pytest.mark.parametrize("round_", [1, 2])
async def test_each_test_gets_an_empty_database(
    redis_client: redis.asyncio.Redis, round_: int
) -> None:
    assert await redis_client.ping()
    assert await redis_client.dbsize() == 0  # the other round's key was flushed
    await redis_client.set(f"left-over-{round_}", b"x")


def test_shared_server_is_ours(redis_server: RedisServer | ExternalRedis, redis_url: str) -> None:
    if not isinstance(redis_server, RedisServer):
        pytest.skip("AIOREDQ_TEST_URL is set: the shared server is not the suite's own")
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port != 6379
    assert redis_server.ping()


@pytest.mark.parametrize("hard", [False, True], ids=["stop-start", "kill-start"])
def test_restart_keeps_data_with_appendonly(
    redis_server_factory: ServerFactory, hard: bool
) -> None:
    server = redis_server_factory(appendonly=True)
    port, pid = server.port, server.pid
    with _client(server) as client:
        client.set("job", b"payload")
    server.restart(hard=hard)
    assert (server.port, server.url) == (port, f"redis://127.0.0.1:{port}/0")
    assert server.pid != pid
    with _client(server) as client:
        assert client.get("job") == b"payload"


def test_restart_without_appendonly_loses_data(fresh_redis: RedisServer) -> None:
    with _client(fresh_redis) as client:
        client.set("job", b"payload")
    fresh_redis.restart()
    with _client(fresh_redis) as client:
        assert client.get("job") is None


def test_kill_makes_server_unreachable(fresh_redis: RedisServer) -> None:
    fresh_redis.kill()
    assert not fresh_redis.running
    assert not fresh_redis.ping()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fresh_redis.pid
    with _client(fresh_redis) as client, pytest.raises(redis.ConnectionError):
        client.ping()


def test_pause_and_resume(fresh_redis: RedisServer) -> None:
    fresh_redis.pause()
    assert not fresh_redis.ping()
    fresh_redis.resume()
    assert fresh_redis.ping()


def test_extra_args_reach_the_server(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory(extra_args=["--client-output-buffer-limit", "pubsub 64kb 32kb 1"])
    reply = call(server.port, "CONFIG", "GET", "client-output-buffer-limit")
    assert isinstance(reply, list) and isinstance(reply[1], bytes)
    assert b"pubsub 65536 32768 1" in reply[1]


@pytest.mark.cluster
async def test_cluster_serves_hash_tagged_keys(redis_cluster: LocalCluster) -> None:
    assert redis_cluster.url == f"redis+cluster://127.0.0.1:{redis_cluster.ports[0]}"
    for node in redis_cluster.nodes:
        assert node.info("cluster")["cluster_state"] == "ok"
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        await client.rpush("{jobs}:pending", b"j1")
        moved = await client.lmove("{jobs}:pending", "{jobs}:processing", "RIGHT", "LEFT")
        assert moved == b"j1"
        assert await client.lrange("{jobs}:processing", 0, -1) == [b"j1"]
        await client.delete("{jobs}:processing")
    finally:
        await client.aclose()


@pytest.mark.cluster
async def test_cluster_fails_over_to_a_replica(redis_cluster_factory: ClusterFactory) -> None:
    cluster = redis_cluster_factory(masters=3, replicas=1)
    roles = [node.info("replication")["role"] for node in cluster.nodes]
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3
    old_master = cluster.master_for_key("{jobs}")
    old_master.kill()
    cluster.wait_stable()
    new_master = cluster.master_for_key("{jobs}")
    assert new_master is not old_master
    client = RedisCluster(host="127.0.0.1", port=new_master.port)
    try:
        await client.set("{jobs}:after-failover", b"ok")
        assert await client.get("{jobs}:after-failover") == b"ok"
    finally:
        await client.aclose()
