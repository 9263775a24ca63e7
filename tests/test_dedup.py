"""Deduplication keys: one job per key while it is queued, delayed or running; freed when the
job finishes or is dead-lettered (``key_ttl`` later); atomic across processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import redis.asyncio
from _waiting import until, until_redis

from aioredq import App, Backoff

Redis = redis.asyncio.Redis
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("url_kind", ["redis", "memory"])
async def test_one_job_per_key_until_it_finishes(url_kind: str, redis_url: str) -> None:
    app = App(redis_url if url_kind == "redis" else "memory://")
    runs: list[str] = []
    release = asyncio.Event()

    @app.task("dd", backoff=Backoff(base=0.05, jitter=False), max_attempts=2)
    async def job(body: str) -> None:
        runs.append(body)
        if body == "fail":
            raise RuntimeError("no")
        await release.wait()

    first = await app.enqueue("dd", "a", key="k")
    assert await app.enqueue("dd", "b", key="k") == first  # queued: nothing added
    assert await app.enqueue("dd", "c", key="k", delay=5) == first
    async with app:
        await until(lambda: runs == ["a"], "the keyed job running")
        assert await app.enqueue("dd", "d", key="k") == first  # running: still held
        release.set()
        # Finished: the key is free again.
        await _enqueue_until_new(app, "e", "k", first)
        await until(lambda: runs == ["a", "e"], "the second keyed job running")

        # key_ttl holds the key after the job finished.
        third = await app.enqueue("dd", "f", key="t", key_ttl=60)
        await until(lambda: runs[-1:] == ["f"], "the ttl job running")
        # Settled: the key now counts down its key_ttl.
        await until_redis(lambda: _counting_down(app, "{dd}:key:t"), True, "the key's ttl")
        assert await app.enqueue("dd", "g", key="t") == third

        # A retried job keeps its key; a dead-lettered one frees it.
        failing = await app.enqueue("dd", "fail", key="x")
        await until(lambda: runs.count("fail") >= 1, "the failing job's first run")
        assert await app.enqueue("dd", "h", key="x") in (failing,)
        await until(lambda: runs.count("fail") == 2, "the failing job's last run")
        await _enqueue_until_new(app, "fail2", "x", failing)
    assert "b" not in runs and "c" not in runs and "d" not in runs and "g" not in runs


WORKER = """
import asyncio, sys
from aioredq import App

async def main(url, n):
    app = App(url, max_connections=50)
    ids = await asyncio.gather(*(app.enqueue("dd4", i, key="once") for i in range(n)))
    await app.aclose()
    print(len(set(ids)))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_concurrent_enqueues_of_one_key_from_four_processes_add_one_job(
    redis_url: str, r: redis.Redis
) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, "250"],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [int(o) for o in outs] == [1, 1, 1, 1]  # every call got the same one id
    assert r.llen("dd4") == 1
    held = r.get("{dd4}:key:once")
    assert held is not None and held in r.lindex("dd4", 0)


async def test_a_wrong_typed_key_is_refused_and_adds_nothing(
    redis_url: str, redis_client: Redis
) -> None:
    from aioredq import AioredqError

    app = App(redis_url)
    try:
        await redis_client.lpush("{dd-bad}:key:k", "x")
        with pytest.raises(AioredqError, match="WRONGTYPE"):
            await app.enqueue("dd-bad", "a", key="k")
        assert await redis_client.exists("dd-bad") == 0
        await until_redis(lambda: redis_client.llen("{dd-bad}:key:k"), 1, "the foreign list kept")
    finally:
        await app.aclose()


async def test_a_late_ack_from_a_worker_taken_for_dead_keeps_the_key_of_the_recovered_job(
    redis_client: Redis,
) -> None:
    from aioredq._codec import encode_envelope
    from aioredq._transports.queue import QueueTransport

    gone, alive = (
        QueueTransport(redis_client, "dd-late", "c1"),
        QueueTransport(redis_client, "dd-late", "c2"),
    )
    raw = encode_envelope("a", msg_id="id1", dedup=("k", 0))
    assert await gone.push_keyed(raw, "id1", "k") == "id1"
    (held,) = (await gone.fetch(1, 60_000, "c1:", 1)).items
    await redis_client.zadd(gone.consumers, {"c1": 0})  # its lease ran out
    await alive.heartbeat(60_000)
    assert await alive.recover("token", 10_000) == 1  # the job waits again
    assert (await gone.ack([held])).count == 0  # the late ack settles nothing
    assert await redis_client.get("{dd-late}:key:k") == b"id1"  # and frees nothing
    other = encode_envelope("b", msg_id="id2", dedup=("k", 0))
    assert await alive.push_keyed(other, "id2", "k") == "id1"
    assert await redis_client.llen("dd-late") == 1


async def _counting_down(app: App, key: str) -> bool:
    """``key`` exists with a time to live (what settling a job with key_ttl leaves)."""
    return int(await app.connection.command.pttl(key)) > 0


async def _enqueue_until_new(app: App, body: str, key: str, holder: str) -> str:
    """Enqueue ``body`` with ``key`` until it is added (the key's holder ``holder`` has
    settled and freed it); the new job's id."""
    ids: list[str] = []

    async def added() -> bool:
        ids.append(await app.enqueue("dd", body, key=key))
        return ids[-1] != holder

    await until_redis(added, True, f"key {key!r} freed")
    return ids[-1]
