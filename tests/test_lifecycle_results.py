"""Results (``result_ttl=``), ``app.result`` and ``app.request``, against a real Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio
from _waiting import until, until_blocked, until_redis
from pydantic import BaseModel

from aioredq import App, Backoff, JobFailed, Reject

FAST = Backoff(0.01, 1, 0.01, jitter=False)


class Sum(BaseModel):
    total: int


@pytest.fixture(params=["redis", "memory"])
def url(request: pytest.FixtureRequest, redis_url: str) -> str:
    return redis_url if request.param == "redis" else "memory://"


async def test_a_request_gets_the_handlers_return_value(url: str) -> None:
    app = App(url)

    @app.task("adds", result_ttl=60, result_type=Sum)
    async def add(body: list[int]) -> Sum:
        return Sum(total=sum(body))

    async with app:
        assert await app.request("adds", [1, 2, 3], timeout=30) == Sum(total=6)
        assert await add.request([4, 5], timeout=30) == Sum(total=9)
        job = await add.enqueue([7])
        assert await add.result(job, timeout=30) == Sum(total=7)
        # Waiting for a result already written returns it at once.
        assert await app.result("adds", job, timeout=30, result_type=None) == {"total": 7}


async def test_the_stored_outcome_of_a_succeeded_and_a_dead_job(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)

    @app.task("outcomes", result_ttl=60, backoff=FAST, max_attempts=1)
    async def outcome(body: str) -> str:
        if body == "bad":
            raise Reject("no thanks")
        return body.upper()

    async with app:
        good = await app.enqueue("outcomes", "hi")
        bad = await app.enqueue("outcomes", "bad")
        assert await app.result("outcomes", good, timeout=30) == "HI"
        with pytest.raises(JobFailed) as failed:
            await app.result("outcomes", bad, timeout=30)
    assert failed.value.error == "Reject: no thanks"
    stored = json.loads(await redis_client.get(f"{{outcomes}}:result:{good}"))
    assert stored["status"] == "succeeded"
    assert stored["value"] == "HI"
    assert "finished_at" in stored
    dead = json.loads(await redis_client.get(f"{{outcomes}}:result:{bad}"))
    assert dead["status"] == "dead"
    assert dead["error"] == "Reject: no thanks"
    assert await redis_client.llen("{outcomes}:dead") == 1
    assert 0 < await redis_client.pttl(f"{{outcomes}}:result:{good}") <= 60_000


async def test_a_result_expires_and_a_waiter_times_out(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)

    @app.task("brief", result_ttl=0.3)
    async def brief(body: str) -> str:
        return body

    async with app:
        job = await app.enqueue("brief", "x")
        assert await app.result("brief", job, timeout=30) == "x"
        await until_redis(
            lambda: redis_client.exists(f"{{brief}}:result:{job}"), 0, "the result to expire"
        )
        with pytest.raises(TimeoutError):
            await app.result("brief", job, timeout=0.2)


async def test_many_concurrent_requests_each_get_their_own_answer(url: str) -> None:
    app = App(url)

    @app.task("echo", result_ttl=60, concurrency=64)
    async def echo(body: int) -> int:
        return body * 2

    async with app:
        answers = await asyncio.gather(*(app.request("echo", n, timeout=60) for n in range(1000)))
    assert answers == [n * 2 for n in range(1000)]


async def test_a_refused_result_keeps_the_job(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    runs: list[str] = []

    @app.task("refused", result_ttl=60, backoff=FAST)
    async def refused(body: str) -> str:
        runs.append(body)
        return body

    job_key_holder: list[str] = []
    async with app:
        job = await app.enqueue("refused", "x", delay=0.5)
        key = f"{{refused}}:result:{job}"
        job_key_holder.append(key)
        await redis_client.rpush(key, "not a string")  # a wrong-typed result key
        await until_redis(lambda: asyncio.sleep(0, len(runs) >= 2), True, "a second run")
        assert await redis_client.type(key) == b"list"
        await redis_client.delete(key)
        assert await app.result("refused", job, timeout=30) == "x"


async def test_inspect_shows_running_jobs_and_results_kept(redis_url: str) -> None:
    from aioredq._inspect import figures, render_table

    app = App(redis_url, shutdown_timeout=0.5)
    started = asyncio.Event()

    @app.task("seen", result_ttl=60)
    async def seen(body: str) -> str:
        if body == "hold":
            started.set()
            await asyncio.Event().wait()
        return body

    async with app:
        assert await app.request("seen", "done", timeout=30) == "done"
        held = await app.enqueue("seen", "hold")
        await asyncio.wait_for(started.wait(), 30)
        (row,) = await figures(app)
        assert row["results"] == 1
        assert [job["id"] for job in row["running"]] == [held]
        assert row["running"][0]["age_s"] >= 0
        assert "1 result(s) kept" in render_table([row])


async def test_a_result_too_large_or_not_json_is_a_dead_job(url: str) -> None:
    app = App(url, max_body_bytes=1000)

    @app.task("big", result_ttl=60, max_attempts=1)
    async def big(body: str) -> object:
        return "x" * 2000 if body == "large" else object()

    async with app:
        with pytest.raises(JobFailed) as large:
            await app.request("big", "large", timeout=30)
        with pytest.raises(JobFailed) as odd:
            await app.request("big", "odd", timeout=30)
    assert large.value.error.startswith("MessageTooLarge: the result is ")
    assert odd.value.error.startswith("UnserializableResult: ")


async def test_a_result_refused_by_maxmemory_loses_nothing(fresh_redis: Any) -> None:
    client = redis.asyncio.Redis.from_url(fresh_redis.url)
    app = App(fresh_redis.url)
    runs: list[int] = []

    @app.task("full", result_ttl=60, backoff=FAST)
    async def full(body: str) -> str:
        runs.append(1)
        if len(runs) == 1:  # the first run finds Redis full when it settles
            await client.config_set("maxmemory-policy", "noeviction")
            await client.config_set("maxmemory", 1)
        return body

    try:
        async with app:
            job = await app.enqueue("full", "x")
            await until(lambda: len(runs) == 1, "the first run")
            [consumer] = app._workers
            await until(lambda: consumer.refusing(), "its outcome refused")
            held = [k async for k in client.scan_iter("{full}:processing:*")]
            await until_redis(lambda: client.llen(held[0]), 1, "the job held while refused")
            await client.config_set("maxmemory", 0)
            assert await app.result("full", job, timeout=30) == "x"
        assert len(runs) == 2  # ran again: its first result was never written
    finally:
        await client.config_set("maxmemory", 0)
        await client.aclose()


async def test_a_wrong_typed_announcement_stream_still_delivers_results(
    redis_url: str, redis_client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aioredq._results.SWEEP_EVERY", 0.2)
    await redis_client.set("{swept}:finished", "not a stream")
    app = App(redis_url)

    @app.task("swept", result_ttl=60)
    async def swept(body: str) -> str:
        return body

    async with app:
        assert await app.request("swept", "x", timeout=30) == "x"
    assert await redis_client.get("{swept}:finished") == b"not a stream"


async def test_a_thousand_waiters_share_one_blocked_connection(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url, max_connections=10)
    try:
        start = await redis_client.info("clients")
        before, blocked = int(start["connected_clients"]), int(start["blocked_clients"])
        ids = await app.enqueue_many("nobody", list(range(1000)))  # no worker runs them
        waiters = [asyncio.ensure_future(app.result("nobody", i)) for i in ids]
        await until_blocked(redis_client, "the results reader", blocked + 1)
        clients = await redis_client.info("clients")
        assert int(clients["blocked_clients"]) == blocked + 1
        # The producing pool (at most 10) and the reader's one connection, not a thousand.
        assert int(clients["connected_clients"]) - before <= 12
        assert not any(w.done() for w in waiters)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    finally:
        await app.aclose()


async def test_a_fastapi_endpoint_gets_the_handlers_answer(redis_url: str) -> None:
    import httpx
    from fastapi import FastAPI

    app = App(redis_url)
    api = FastAPI()

    @app.task("quotes", result_ttl=60, result_type=Sum)
    async def quote(body: list[int]) -> Sum:
        return Sum(total=sum(body))

    @api.get("/sum")
    async def sum_endpoint(a: int, b: int) -> dict[str, int]:
        return {"total": (await quote.request([a, b], timeout=30)).total}

    async with app:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            answers = await asyncio.gather(
                *(http.get("/sum", params={"a": n, "b": 1}) for n in range(50))
            )
    assert [r.json() for r in answers] == [{"total": n + 1} for n in range(50)]
