"""The job lifecycle across processes: a worker process (the CLI) and this test's app."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio
from _waiting import until_redis

from aioredq import App, JobFailed

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.lifecycle_worker:app"


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "aioredq", APP, "--url", redis_url, "--log-level", "WARNING"],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_request_timeout_cancel_and_a_crash_after_the_return(
    start_worker: object, redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    assert callable(start_worker)
    first = start_worker()
    app = App(redis_url)  # declares no handler: it only produces and waits
    try:
        # request/reply between two processes
        assert await app.request("lc", "hi", timeout=60) == "hi:1"

        # a hanging handler times out on each attempt, then is dead-lettered
        await app.enqueue("hangs", "x")
        await until_redis(lambda: redis_client.llen("{hangs}:dead"), 1, "the timed-out job")
        (letter,) = [json.loads(x) for x in await redis_client.lrange("{hangs}:dead", 0, -1)]
        assert letter["error"].startswith("HandlerTimeout: ")
        assert letter["attempts"] == 2

        # a running job is cancelled from this process
        long = await app.enqueue("lc", "long")
        await until_redis(lambda: redis_client.lrange("started", 0, -1), [long.encode()], "start")
        assert await app.cancel("lc", long) is True
        with pytest.raises(JobFailed) as failed:
            await app.result("lc", long, timeout=60)
        assert failed.value.error.startswith("Cancelled: ")
        assert await app.cancel("lc", long) is False

        # killed after the handler returned, before the ack: the job runs again, and its one
        # result (written with the second run's ack) reaches the waiter
        killed = await app.enqueue("lc", "kill")
        waiter = asyncio.ensure_future(app.result("lc", killed, timeout=60))
        await asyncio.to_thread(first.wait, 60)
        assert first.returncode == -9
        assert await redis_client.exists(f"{{lc}}:result:{killed}") == 0
        start_worker()
        assert await waiter == "kill:2"
        runs = [r.decode() for r in await redis_client.lrange("runs", 0, -1)]
        assert runs.count("kill|1") == 1 and runs.count("kill|2") == 1
        announced = await redis_client.xrange("{lc}:finished")
        key = f"{{lc}}:result:{killed}".encode()
        assert [k for _, fields in announced for k in fields.values()].count(key) == 1
    finally:
        await app.aclose()
