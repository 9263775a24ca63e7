"""``app.cancel``: waiting jobs never run, running ones are interrupted; dead with Cancelled."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import redis
import redis.asyncio
from _waiting import until, until_redis

from aioredq import App, JobFailed, RedisCommandError


async def test_cancel_of_queued_delayed_running_and_unknown_jobs(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    producer = App(redis_url)
    queued = await producer.enqueue("cx", "queued")
    delayed = await producer.enqueue("cx", "delayed", delay=3600)
    assert await producer.cancel("cx", queued) is True
    assert await producer.cancel("cx", delayed) is True
    assert await producer.cancel("cx", queued) is False  # finished now
    assert await producer.cancel("cx", "no-such-id") is False
    assert await redis_client.llen("cx") == 0
    assert await redis_client.zcard("{cx}:delayed") == 0
    letters = [json.loads(x) for x in await redis_client.lrange("{cx}:dead", 0, -1)]
    assert sorted(x["id"] for x in letters) == sorted([queued, delayed])
    assert all(x["error"].startswith("Cancelled: ") for x in letters)

    app = App(redis_url)
    started = asyncio.Event()
    ran: list[str] = []

    @app.task("cx", result_ttl=60)
    async def job(body: str) -> str:
        ran.append(body)
        if body == "long":
            started.set()
            await asyncio.Event().wait()
        return body

    async with app:
        running = await producer.enqueue("cx", "long")
        await asyncio.wait_for(started.wait(), 30)
        assert await producer.cancel("cx", running) is True
        with pytest.raises(JobFailed) as failed:
            await app.result("cx", running, timeout=30)
        assert failed.value.error.startswith("Cancelled: ")
        await until(lambda: app.stats()["job"].cancelled == 1, "the cancel counted")
        # The consumer goes on with the next job.
        assert await app.request("cx", "after", timeout=30) == "after"
    assert ran == ["long", "after"]
    await until_redis(lambda: redis_client.llen("{cx}:dead"), 3, "three dead letters")
    await producer.aclose()


async def test_cancel_on_memory() -> None:
    app = App("memory://")
    started = asyncio.Event()

    @app.task("mx", result_ttl=60)
    async def job(body: str) -> str:
        started.set()
        await asyncio.Event().wait()
        return body

    waiting = await app.enqueue("mx", "w", delay=3600)
    assert await app.cancel("mx", waiting) is True
    async with app:
        with pytest.raises(JobFailed):
            await app.result("mx", waiting, timeout=30)
        running = await app.enqueue("mx", "r")
        await asyncio.wait_for(started.wait(), 30)
        assert await app.cancel("mx", running) is True
        with pytest.raises(JobFailed):
            await app.result("mx", running, timeout=30)


async def test_cancel_on_wrong_typed_keys_changes_nothing(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    try:
        job = await app.enqueue("cw", "x")
        await redis_client.set("{cw}:dead", "not a list")
        with pytest.raises(RedisCommandError, match="WRONGTYPE"):
            await app.cancel("cw", job)
        assert await redis_client.llen("cw") == 1
        await redis_client.delete("{cw}:dead")
        assert await app.cancel("cw", job) is True
        assert await redis_client.llen("cw") == 0
    finally:
        await app.aclose()


def test_the_cancel_command_cancels_a_waiting_job_and_says_when_none_has_the_id(
    redis_url: str,
) -> None:
    """``aioredq cancel MODULE:ATTR QUEUE ID`` from another process: the waiting job is
    dead-lettered with Cancelled; an unknown id is exit 1."""

    queue = "cli-jobs"  # tests.apps.cli_app declares a handler on it
    job_id = asyncio.run(_enqueue(App(redis_url), queue))
    argv = [sys.executable, "-m", "aioredq", "cancel", "tests.apps.cli_app:app", queue]
    done = subprocess.run(
        [*argv, job_id, "--url", redis_url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert f"{job_id}: cancelled" in done.stdout
    with redis.Redis.from_url(redis_url) as r:
        assert r.llen(queue) == 0
        [letter] = [json.loads(x) for x in r.lrange(f"{{{queue}}}:dead", 0, -1)]
    assert letter["id"] == job_id and letter["error"].startswith("Cancelled")
    again = subprocess.run(
        [*argv, job_id, "--url", redis_url], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "no waiting or running job" in again.stderr


async def _enqueue(app: App, queue: str) -> str:
    try:
        return await app.enqueue(queue, "to be cancelled")
    finally:
        await app.aclose()
