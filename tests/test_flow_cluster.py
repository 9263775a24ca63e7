"""Priorities, deduplication, pause and periodic jobs on a real local Redis Cluster: every key
of a queue in its slot, on three queues spread over the masters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from _servers import LocalCluster
from _waiting import until
from redis.asyncio.cluster import RedisCluster

from aioredq import App

pytestmark = pytest.mark.cluster
QUEUES = ("flow-a", "flow-b", "flow-c")


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    await client.initialize()
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    await client.aclose()


async def test_flow_features_on_a_cluster(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    app = App(redis_cluster.url)
    runs: dict[str, list[str]] = {q: [] for q in QUEUES}
    ticks: list[datetime] = []

    def handler(queue: str):  # type: ignore[no-untyped-def]
        async def run(body: str) -> None:
            runs[queue].append(body)

        run.__name__ = f"run_{queue.replace('-', '_')}"
        return run

    for q in QUEUES:
        app.add_task(handler(q), q, concurrency=1, batch=1)

    @app.task("flow-tick", every=0.5)
    async def tick(at: datetime) -> None:
        ticks.append(at)

    for q in QUEUES:
        await app.pause(q)
        for p in (0, 5, 9):
            await app.enqueue(q, f"p{p}", priority=p)
        first = await app.enqueue(q, "keyed", key="k")
        assert await app.enqueue(q, "keyed again", key="k") == first
    async with app:
        await until(lambda: len(ticks) >= 2, "two ticks")
        assert all(not r for r in runs.values())  # paused
        for q in QUEUES:
            await app.resume(q)
        await until(lambda: all(len(r) == 4 for r in runs.values()), "every job")
    for q in QUEUES:
        assert runs[q][:3] == ["p9", "p5", "p0"], runs[q]
    assert len(set(ticks)) == len(ticks)
