"""Priorities: higher first among waiting jobs, 0 is the plain list (foreign LPUSH items
included), and a job keeps its priority through retries, hand-backs and recovery."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from _waiting import until

from aioredq import App, Backoff

Redis = redis.asyncio.Redis


@pytest.mark.parametrize("url_kind", ["redis", "memory"])
async def test_higher_priorities_run_first_and_foreign_items_are_priority_zero(
    url_kind: str, redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url if url_kind == "redis" else "memory://")
    order: list[str] = []

    @app.task("prio", concurrency=1, batch=1)
    async def job(body: str) -> None:
        order.append(body)

    for p in (0, 3, 9, 1, 0, 9):
        await app.enqueue("prio", f"p{p}", priority=p)
    if url_kind == "redis":
        await redis_client.lpush("prio", "foreign")  # another program: priority 0, last
    expected = ["p9", "p9", "p3", "p1", "p0", "p0"] + (["foreign"] if url_kind == "redis" else [])
    async with app:
        await until(lambda: len(order) == len(expected), "every job run")
    assert order == expected


async def test_a_retried_job_keeps_its_priority(redis_url: str, redis_client: Redis) -> None:
    app = App(redis_url)
    runs: list[str] = []
    release = asyncio.Event()

    @app.task("prio-retry", concurrency=1, batch=1, backoff=Backoff(base=0.2, jitter=False))
    async def job(body: str) -> None:
        runs.append(body)
        if body == "high" and runs.count("high") == 1:
            raise RuntimeError("once")
        if body == "blocker":
            await release.wait()
        if body.startswith("low"):
            await asyncio.sleep(0.5)  # the retry falls due while low jobs still wait

    async with app:
        await app.enqueue("prio-retry", "blocker", priority=9)
        await until(lambda: runs == ["blocker"], "the blocker running")
        await app.enqueue("prio-retry", "high", priority=5)
        await app.enqueue_many("prio-retry", [f"low-{i}" for i in range(6)])
        release.set()
        await until(lambda: len(runs) == 9, "every job run")
    # The failed high job came back from the delayed set to its priority's list, ahead of
    # every plain job still waiting (up to the pool's capacity, 1 + 2 x 1, of plain ones
    # were fetched in between).
    assert runs[:2] == ["blocker", "high"]
    assert runs.index("high", 2) <= 5
    assert await redis_client.exists("{prio-retry}:priority:5") == 0


async def test_a_priority_out_of_range_is_refused(redis_url: str) -> None:
    app = App(redis_url)
    try:
        for bad in (-1, 10, 1.5, True):
            with pytest.raises(ValueError, match="priority"):
                await app.enqueue("q", "x", priority=bad)  # type: ignore[arg-type]
    finally:
        await app.aclose()


async def test_a_wrong_typed_priority_list_is_skipped_and_the_rest_flows(
    redis_url: str, redis_client: Redis
) -> None:
    app = App(redis_url)
    done: list[str] = []

    @app.task("prio-bad", concurrency=1)
    async def job(body: str) -> None:
        done.append(body)

    await redis_client.set("{prio-bad}:priority:7", "not a list")
    await app.enqueue("prio-bad", "plain")
    await app.enqueue("prio-bad", "high", priority=9)
    async with app:
        await until(lambda: sorted(done) == ["high", "plain"], "the jobs of healthy lists")
    assert await redis_client.get("{prio-bad}:priority:7") == b"not a list"


async def test_inspect_counts_every_priority_in_the_length(
    redis_url: str, redis_client: Redis
) -> None:
    from aioredq._inspect import figures

    app = App(redis_url)

    @app.task("prio-count")
    async def job(body: str) -> None: ...

    try:
        await app.enqueue_many("prio-count", ["a", "b"])
        await app.enqueue("prio-count", "c", priority=4)
        await app.enqueue("prio-count", "d", priority=9)
        (row,) = await figures(app)
        assert row["length"] == 4
        await redis_client.set("{prio-count}:priority:2", "x")
        (row,) = await figures(app)
        assert row["length"] is None and "WRONGTYPE" in row["errors"]["length"]
    finally:
        await app.aclose()


async def test_recovery_and_hand_back_put_each_job_back_in_its_priority_list(
    redis_client: Redis,
) -> None:
    from aioredq._codec import encode_envelope
    from aioredq._transports.queue import QueueTransport

    high = encode_envelope("high", msg_id="h", priority=3)
    plain = encode_envelope("plain", msg_id="p")
    # An orphaned processing list (its consumer never registered) holding both.
    await redis_client.lpush("{prio-rec}:processing:ghost", high, plain)
    me = QueueTransport(redis_client, "prio-rec", "me")
    assert await me.recover_lists(["ghost"]) == 2
    assert await redis_client.lrange("{prio-rec}:priority:3", 0, -1) == [high]
    assert await redis_client.lrange("prio-rec", 0, -1) == [plain]
    # Fetched (high first), then handed back: each to its own list again.
    fetched = await me.fetch(10, 5000, "me:1:", 10)
    assert [b'"high"' in item for item in fetched.items] == [True, False]
    assert await me.handback([(item, item) for item in fetched.items]) == 2
    assert await redis_client.llen("{prio-rec}:priority:3") == 1
    assert await redis_client.llen("prio-rec") == 1
    assert await redis_client.llen("{prio-rec}:processing:me") == 0
