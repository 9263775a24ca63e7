"""Results, request/reply, cancel and inspect on a real local Redis Cluster."""

from __future__ import annotations

import asyncio

import pytest
from _servers import LocalCluster

from aioredq import App, JobFailed
from aioredq._inspect import figures

pytestmark = pytest.mark.cluster


async def test_request_result_and_cancel_on_a_cluster(redis_cluster: LocalCluster) -> None:
    app = App(redis_cluster.url, shutdown_timeout=0.5)
    started = asyncio.Event()

    @app.task("lc-cluster", result_ttl=60)
    async def job(body: str) -> str:
        if body == "long":
            started.set()
            await asyncio.Event().wait()
        return body.upper()

    async with app:
        answers = await asyncio.gather(
            *(app.request("lc-cluster", f"r{n}", timeout=60) for n in range(200))
        )
        assert answers == [f"R{n}" for n in range(200)]
        later = await app.enqueue("lc-cluster", "never", delay=3600)
        assert await app.cancel("lc-cluster", later) is True
        running = await app.enqueue("lc-cluster", "long")
        await asyncio.wait_for(started.wait(), 30)
        assert await app.cancel("lc-cluster", running) is True
        with pytest.raises(JobFailed):
            await app.result("lc-cluster", running, timeout=60)
        with pytest.raises(JobFailed):
            await app.result("lc-cluster", later, timeout=60)
        (row,) = await figures(app)
        assert row["results"] == 202
