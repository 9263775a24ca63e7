"""Pause and resume: real worker processes stop starting a handler's messages, finish what
runs, lose nothing, and stay paused across a worker restart and a Redis restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio
from _servers import RedisServer
from _waiting import until_redis
from test_tasks_crash import Workers

from aioredq import App, ConfigurationError

Redis = redis.asyncio.Redis
ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.task_worker:app"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioredq", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def durable(redis_server_factory) -> RedisServer:  # type: ignore[no-untyped-def]
    return redis_server_factory(appendonly=True)  # type: ignore[no-any-return]


@pytest.fixture
def workers(durable: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(durable.url, tmp_path)
    try:
        yield group
    finally:
        group.close()


async def test_paused_workers_start_nothing_finish_what_runs_and_stay_paused_across_restarts(
    workers: Workers, durable: RedisServer
) -> None:
    url = durable.url
    r = Redis.from_url(url)
    producer = App(url)
    try:
        settings = {"sleep": "1.0", "concurrency": "4", "lease": "2"}
        first = workers.start(**settings)
        workers.start(**settings)
        await producer.enqueue_many("jobs", [f"before-{i}" for i in range(3)])
        await until_redis(lambda: r.llen("runs"), 3, "the first jobs running")

        paused = cli("pause", APP, "work", "--url", url)
        assert paused.returncode == 0, paused.stderr
        assert await r.exists("{jobs}:paused") == 1
        await producer.enqueue_many("jobs", [f"after-{i}" for i in range(10)])
        # In-flight jobs finish; nothing new starts, nothing is lost.
        await until_redis(lambda: r.llen("done"), 3, "the running jobs finishing")
        await until_redis(lambda: r.llen("jobs"), 10, "the paused jobs waiting in the queue")

        # A worker restart and a Redis restart (append-only file) keep the pause.
        first.kill()
        first.wait()
        durable.restart()
        await r.aclose()
        r = Redis.from_url(url)
        workers.start(**settings)
        inspected = cli("inspect", APP, "--url", url, "--json")
        assert inspected.returncode == 0, inspected.stderr
        assert '"paused": true' in inspected.stdout
        await until_redis(lambda: r.llen("jobs"), 10, "the jobs still waiting after restarts")
        assert await r.llen("runs") == 3  # the 3 started before the pause, once each

        resumed = cli("resume", APP, "work", "--url", url)
        assert resumed.returncode == 0, resumed.stderr
        await until_redis(lambda: r.llen("done"), 13, "every job done after the resume")
        runs = [raw.decode().split("|")[0] for raw in await r.lrange("runs", 0, -1)]
        assert sorted(runs) == sorted(
            [f"before-{i}" for i in range(3)] + [f"after-{i}" for i in range(10)]
        )
    finally:
        await producer.aclose()
        await r.aclose()


@pytest.mark.parametrize("url_kind", ["redis", "memory"])
async def test_pause_holds_tasks_and_stream_groups_in_process(
    url_kind: str, redis_url: str
) -> None:
    app = App(redis_url if url_kind == "redis" else "memory://")
    seen: list[str] = []

    @app.task("pq")
    async def job(body: str) -> None:
        seen.append(f"task:{body}")

    @app.stream("ps", group="g")
    async def event(body: str) -> None:
        seen.append(f"stream:{body}")

    async with app:
        await app.pause("job")
        await app.pause("event")
        assert await app.is_paused("pq") and await app.is_paused("event")
        # The promise is "within about a second": a stream consumer looks at the pause key
        # every 0.5 s, and a blocking read (1 s) may be under way when it is set.
        await asyncio.sleep(1.6)
        await app.enqueue("pq", "a")
        await app.append("ps", "b")
        await asyncio.sleep(1.5)  # an absence: give the workers time to (wrongly) start them
        assert seen == []
        await app.resume("job")
        await app.resume("event")
        deadline = asyncio.get_running_loop().time() + 20
        while sorted(seen) != ["stream:b", "task:a"]:
            assert asyncio.get_running_loop().time() < deadline, seen
            await asyncio.sleep(0.02)


def test_pub_sub_and_unknown_handlers_cannot_be_paused() -> None:
    app = App("memory://")

    @app.subscribe("news")
    async def news(body: str) -> None: ...

    with pytest.raises(ConfigurationError, match="pub/sub"):
        app.pause_key("news")
    with pytest.raises(ConfigurationError, match="no handler"):
        app.pause_key("nope")
    done = cli("pause", APP, "nope", "--url", "redis://127.0.0.1:1")
    assert done.returncode == 2 and "no handler" in done.stderr
