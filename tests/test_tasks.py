"""Reliable task queues (``@app.task``) against a real Redis server, in-process."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from _servers import ServerFactory
from _waiting import until_blocked
from pydantic import BaseModel

from aioredq import App, Backoff, Message, Reject, Retry
from aioredq._codec import parse_task_item
from aioredq._transports.queue import QueueTransport

# Consumers' blocking reads last this long in the tests of features that must not wait for a
# read to end: a missing wake-up then costs seconds, far beyond any scheduling noise.
LONG_BLOCK = 8.0


@pytest.fixture
def long_blocks(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr("aioredq._task.BLOCK_SECONDS", LONG_BLOCK)
    return LONG_BLOCK


Redis = redis.asyncio.Redis


class Email(BaseModel):
    to: str
    n: int = 0


async def wait_until(
    check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def processing_lists(r: Redis, queue: str) -> dict[bytes, list[bytes]]:
    names = await r.keys(f"{{{queue}}}:processing:*")
    return {n: await r.lrange(n, 0, -1) for n in names}


async def nothing_held(r: Redis, queue: str) -> bool:
    return all(not items for items in (await processing_lists(r, queue)).values())


async def server_ms(r: Redis) -> int:
    seconds, micros = await r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def letters(raw: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in raw]


# end to end ---------------------------------------------------------------------------------
async def test_every_way_of_enqueueing_reaches_the_handler(redis_url: str, redis_client: Redis):
    app = App(redis_url)
    got: list[str] = []
    emails: list[Email] = []

    @app.task("jobs")
    async def job(body: str) -> None:
        got.append(body)

    @app.task("emails")
    async def email(body: Email) -> None:
        emails.append(body)

    async with app:
        ids = [await app.enqueue("jobs", "one")]
        ids += await app.enqueue_many("jobs", ["two", "three"])
        ids.append(await job.enqueue("four"))
        await redis_client.lpush("jobs", "email:123")
        await redis_client.lpush("emails", json.dumps({"to": "a@b.c", "n": 7}))
        await email.enqueue(Email(to="x@y.z"))
        await wait_until(lambda: len(got) == 5 and len(emails) == 2, what="all jobs")
        await wait_until(lambda: nothing_held(redis_client, "jobs"), what="acks")
        await wait_until(lambda: nothing_held(redis_client, "emails"), what="acks")
    assert sorted(got) == sorted(["one", "two", "three", "four", "email:123"])
    assert "email:123" in got  # the foreign string arrives unchanged
    assert sorted(e.to for e in emails) == ["a@b.c", "x@y.z"]
    assert Email(to="a@b.c", n=7) in emails
    assert len(set(ids)) == 4
    assert await redis_client.llen("jobs") == 0
    assert await redis_client.llen("{jobs}:dead") == 0
    # a clean stop deregisters the consumer and leaves no processing list behind
    assert await redis_client.zcard("{jobs}:consumers") == 0
    assert await processing_lists(redis_client, "jobs") == {}


async def test_single_consumer_is_fifo(redis_url: str, redis_client: Redis):
    app = App(redis_url)
    order: list[str] = []

    @app.task("fifo", concurrency=1, batch=7)
    async def job(body: str) -> None:
        order.append(body)

    expected = [f"j{i:03}" for i in range(60)]
    await app.enqueue_many("fifo", expected[:20])
    for body in expected[20:40]:
        await redis_client.lpush("fifo", body)  # foreign items keep their place
    await app.enqueue_many("fifo", expected[40:])
    async with app:
        await wait_until(lambda: len(order) == 60, what="60 jobs")
    assert order == expected


async def test_foreign_bytes_and_text_round_trip_exactly(redis_url: str, redis_client: Redis):
    app = App(redis_url)
    raw_got: list[bytes] = []
    text_got: list[str] = []

    @app.task("raw")
    async def raw(body: bytes) -> None:
        raw_got.append(body)

    @app.task("text")
    async def text(body: str) -> None:
        text_got.append(body)

    weird = [b'\xff\xfe\x00"\\/\x01\x7f\n end', b"\x80", b'{"aioredq":1}', b"plain"]
    texts = ['h\u00e9llo \u2713 "q" \\ /\n\t', "\U0001f600", '{"json": "but str"}']
    async with app:
        await redis_client.lpush("raw", *weird)
        await redis_client.lpush("text", *(t.encode() for t in texts))
        await app.enqueue("raw", b"\x00\xffenqueued")
        await wait_until(lambda: len(raw_got) == 5 and len(text_got) == 3, what="all items")
    assert raw_got == [*weird, b"\x00\xffenqueued"]
    assert text_got == texts


async def test_message_metadata(redis_url: str, redis_client: Redis):
    app = App(redis_url)
    seen: list[Message] = []

    @app.task("meta")
    async def job(body: dict[str, int], message: Message) -> None:
        seen.append(message)

    before = datetime.now(UTC) - timedelta(seconds=1)
    msg_id = await app.enqueue("meta", {"a": 1}, headers={"trace": "t-1"})
    await redis_client.lpush("meta", '{"b": 2}')
    async with app:
        await wait_until(lambda: len(seen) == 2, what="2 messages")
    mine, foreign = seen
    assert (mine.id, mine.queue, mine.attempt, mine.headers) == (
        msg_id,
        "meta",
        1,
        {"trace": "t-1"},
    )
    assert mine.enqueued_at is not None and mine.enqueued_at >= before
    assert foreign.raw == b'{"b": 2}' and foreign.attempt == 1 and foreign.id


# leases -------------------------------------------------------------------------------------
async def test_slow_handler_is_never_taken_over(redis_url: str, redis_client: Redis):
    runs: list[str] = []

    def make_app() -> App:
        app = App(redis_url)

        # One worker and a one-item buffer: once both are taken the consumer stops fetching,
        # so only its heartbeat renews the lease.
        @app.task("slow", lease=1.0, concurrency=1, batch=1)
        async def slow(body: str) -> None:
            runs.append(body)
            if body == "slow":
                await asyncio.sleep(3.0)

        return app

    holder, other = make_app(), make_app()
    async with holder:
        await holder.enqueue_many("slow", ["slow", "next"])
        await wait_until(lambda: runs == ["slow"], what="the slow job to start")
        await wait_until(async_eq(lambda: redis_client.llen("slow"), 0), what="a full buffer")
        async with other:
            for _ in range(4):  # the holder's lease is renewed while its handler runs
                await asyncio.sleep(0.5)
                now = await server_ms(redis_client)
                scores = await redis_client.zrange("{slow}:consumers", 0, -1, withscores=True)
                assert len(scores) == 2 and all(score >= now for _, score in scores)
            await wait_until(lambda: len(runs) == 2, what="the next job")
            await wait_until(lambda: nothing_held(redis_client, "slow"), what="the acks")
            await asyncio.sleep(1.5)  # past another lease: still nobody runs anything again
    assert runs == ["slow", "next"]


async def test_dead_consumers_work_goes_back_to_the_head_oldest_first(redis_client: Redis):
    ghost = QueueTransport(redis_client, "q", "ghost")
    live = QueueTransport(redis_client, "q", "live")
    await redis_client.lpush("q", "a", "b", "c")
    got = await ghost.fetch(2, 60_000, "ghost:1:", 2)  # a, b in flight with the ghost
    assert [parse_task_item(x).foreign for x in got.items] == [b"a", b"b"]
    await ghost.fetch(1, 60_000, "ghost:2:", 1)  # c too, in a later batch
    await redis_client.lpush("q", "x", "y")
    assert await live.recover("tok", 1000) == 0  # the ghost's lease is still valid
    await redis_client.zadd("{q}:consumers", {"ghost": 0})  # ... and now it has expired
    await live.heartbeat(60_000)
    assert await live.recover("tok", 1000) == 3
    assert not await redis_client.exists("{q}:processing:ghost")
    assert await redis_client.zrange("{q}:consumers", 0, -1) == [b"live"]
    assert not await redis_client.exists("{q}:recovering")  # the lock is released
    again = await live.fetch(10, 60_000, "live:1:", 10)
    items = [parse_task_item(x) for x in again.items]
    assert [i.foreign for i in items] == [b"a", b"b", b"c", b"x", b"y"]
    assert [i.attempts for i in items] == [2, 2, 2, 1, 1]  # the crashed delivery counted


async def test_interrupted_waits_never_move_anything(redis_url: str, redis_client: Redis):
    """The blocking wait (BLMOVE q q RIGHT RIGHT) cut short at any moment, by a timeout, a
    cancel or a killed connection, leaves the queue exactly as the producer made it."""
    blocking = Redis.from_url(redis_url, socket_timeout=5)
    transport = QueueTransport(redis_client, "w", reader=blocking)
    try:
        pushed = []
        for i in range(60):
            waiter = asyncio.ensure_future(transport.wait(0.05 * (i % 3 + 1)))
            await asyncio.sleep(0.001 * (i % 7))
            if i % 3 == 0:
                await redis_client.lpush("w", f"i{i}")
                pushed.append(f"i{i}".encode())
            if i % 4 == 0:
                waiter.cancel()
            if i % 5 == 0:
                await redis_client.client_kill_filter(_type="normal", skipme=True)
            await asyncio.gather(waiter, return_exceptions=True)
        assert await redis_client.lrange("w", 0, -1) == pushed[::-1]
    finally:
        await blocking.aclose()


async def test_expired_consumer_recovered_within_lease(redis_url: str, redis_client: Redis):
    """A consumer that fell silent holding work: a live one runs it within about the lease."""
    ghost = QueueTransport(redis_client, "rec", "ghost")
    await redis_client.lpush("rec", "held-1", "held-2")
    await ghost.fetch(2, 1000, "ghost:1:", 2)  # lease 1 s, never renewed
    silent_since = time.monotonic()
    app = App(redis_url)
    done: dict[str, float] = {}

    @app.task("rec", lease=1.0)
    async def job(body: str, message: Message) -> None:
        assert message.attempt == 2
        done[body] = time.monotonic()

    async with app:
        await wait_until(lambda: len(done) == 2, what="the recovered jobs")
    took = max(done.values()) - silent_since
    assert took >= 0.9  # not before the lease ran out
    print(f"\nrecovered a silent consumer's work {took:.2f}s after its last renewal (lease 1s)")


# failures -----------------------------------------------------------------------------------
async def test_failures_back_off_and_end_in_dead_letters(redis_url: str, redis_client: Redis):
    app = App(redis_url)
    attempts: list[tuple[int, float]] = []

    @app.task("poison", max_attempts=4, backoff=Backoff(base=0.2, factor=2, jitter=False))
    async def poison(body: dict[str, str], message: Message) -> None:
        attempts.append((message.attempt, time.monotonic()))
        raise ValueError("boom")

    async with app:
        msg_id = await poison.enqueue({"k": "v"})
        await wait_until(lambda: redis_client.llen("{poison}:dead"), what="a dead letter")
        await asyncio.sleep(0.5)  # nothing runs after the dead letter
    assert [a for a, _ in attempts] == [1, 2, 3, 4]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(attempts)]
    print(f"\ngaps between attempts: {[round(g, 3) for g in gaps]} (backoff 0.2, 0.4, 0.8)")
    for gap, delay in zip(gaps, [0.2, 0.4, 0.8], strict=True):
        assert gap >= delay - 0.01
    assert gaps[0] < gaps[1] < gaps[2]
    [letter] = letters(await redis_client.lrange("{poison}:dead", 0, -1))
    assert set(letter) == {"id", "queue", "body", "error", "attempts", "failed_at"}
    assert letter["id"] == msg_id and letter["queue"] == "poison"
    assert letter["error"] == "ValueError: boom" and letter["attempts"] == 4
    assert datetime.fromisoformat(letter["failed_at"]).tzinfo is not None
    original = parse_task_item(letter["body"].encode())
    assert original.id == msg_id and original.attempts == 0  # requeueable as it was
    assert await nothing_held(redis_client, "poison")
    assert await redis_client.zcard("{poison}:delayed") == 0


async def test_reject_and_retry(redis_url: str, redis_client: Redis, long_blocks: float):
    app = App(redis_url)
    runs: list[tuple[str, int, float]] = []

    @app.task("ctl", max_attempts=3)
    async def ctl(body: str, message: Message) -> None:
        runs.append((body, message.attempt, time.monotonic()))
        if body == "reject":
            raise Reject("not for us")
        if body == "retry" and message.attempt == 1:
            raise Retry(delay=0.6)

    async with app:
        await redis_client.lpush("ctl", "reject")
        await ctl.enqueue("retry")
        # The consumer is parked in a long blocking read when the retry is scheduled: the
        # retry runs well before that read would end only if the wait is re-sized.
        await wait_until(lambda: len(runs) == 3, timeout=long_blocks / 2, what="3 runs")
        await wait_until(lambda: nothing_held(redis_client, "ctl"), what="acks")
    assert [(b, a) for b, a, _ in runs if b == "reject"] == [("reject", 1)]
    first, second = [t for b, _, t in runs if b == "retry"]
    print(f"\nRetry(delay=0.6) ran again after {second - first:.3f}s")
    assert second - first >= 0.59
    [letter] = letters(await redis_client.lrange("{ctl}:dead", 0, -1))
    assert letter["error"] == "Reject: not for us" and letter["attempts"] == 1
    assert letter["body"] == "reject"


async def test_malformed_bodies_are_dead_lettered_at_once(redis_url: str, redis_client: Redis):
    app = App(redis_url)
    texts: list[str] = []
    models: list[Email] = []

    @app.task("txt")
    async def txt(body: str) -> None:
        texts.append(body)

    @app.task("mdl")
    async def mdl(body: Email) -> None:
        models.append(body)

    async with app:
        await redis_client.lpush("txt", b"\xff\xfe not utf-8", b"fine")
        await redis_client.lpush("mdl", b"not json", b'{"to": "a", "n": "many"}', b"\xc3")
        await redis_client.lpush("mdl", b'{"to": "ok@b.c"}')
        await wait_until(lambda: texts == ["fine"] and len(models) == 1, what="good items")
        await wait_until(
            lambda: redis_client.llen("{mdl}:dead"), what="dead letters"
        )  # then check all of them
        await wait_until(
            async_eq(lambda: redis_client.llen("{mdl}:dead"), 3), what="3 dead letters"
        )
    [bad_text] = letters(await redis_client.lrange("{txt}:dead", 0, -1))
    assert bad_text["error"].startswith("UnicodeDecodeError")
    # kept exactly: an item that is not UTF-8 is carried as base64
    assert bad_text["attempts"] == 1 and "body" not in bad_text
    assert base64.b64decode(bad_text["body_b64"]) == b"\xff\xfe not utf-8"
    bad = {
        d.get("body") or base64.b64decode(d["body_b64"]): d
        for d in letters(await redis_client.lrange("{mdl}:dead", 0, -1))
    }
    assert bad[b"\xc3"]["error"].startswith("UnicodeDecodeError")
    assert bad["not json"]["error"].startswith("ValidationError")
    assert bad['{"to": "a", "n": "many"}']["error"].startswith("ValidationError")
    assert "n" in bad['{"to": "a", "n": "many"}']["error"]
    assert all(d["attempts"] == 1 for d in bad.values())
    assert models == [Email(to="ok@b.c")]
    assert await nothing_held(redis_client, "mdl") and await nothing_held(redis_client, "txt")


def async_eq(get: Callable[[], Awaitable[Any]], expected: Any) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await get() == expected)

    return check


# delays -------------------------------------------------------------------------------------
async def test_delayed_jobs_run_when_due(redis_url: str, redis_client: Redis):
    app = App(redis_url)
    ran: dict[str, float] = {}

    @app.task("later")
    async def later(body: str) -> None:
        ran[body] = time.time()

    async with app:
        start = time.time()
        await later.enqueue("delay", delay=1.0)
        at = datetime.now(UTC) + timedelta(seconds=1.5)
        await app.enqueue_many("later", ["at"], at=at)
        assert await redis_client.zcard("{later}:delayed") == 2
        assert await redis_client.llen("later") == 0
        await wait_until(lambda: len(ran) == 2, what="both delayed jobs")
    assert ran["delay"] >= start + 1.0 - 0.005
    assert ran["at"] >= at.timestamp() - 0.005
    print(
        f"\nlateness: delay {ran['delay'] - start - 1.0:.3f}s, at {ran['at'] - at.timestamp():.3f}s"
    )


async def test_wait_is_sized_to_the_next_due_job(
    redis_url: str, redis_client: Redis, long_blocks: float
):
    """An idle consumer that knows of a delayed job wakes for it, not on its next poll."""
    app = App(redis_url)
    ran: dict[str, float] = {}

    @app.task("sized")
    async def sized(body: str) -> None:
        ran[body] = time.time()

    async with app:
        await until_blocked(redis_client, "the consumer parked in a blocking read")
        due = time.time() + 2.3
        await sized.enqueue("delayed", delay=2.3)
        await sized.enqueue("kick")  # wakes it; its next fetch learns of the delayed job
        # Waiting out a whole blocking read would run it about 5.7 s late.
        await wait_until(lambda: len(ran) == 2, timeout=2.3 + 2.5, what="both jobs")
    lateness = ran["delayed"] - due
    print(f"\nsized wait: delayed job ran {lateness:.3f}s after due")
    assert lateness >= -0.005


# stopping -----------------------------------------------------------------------------------
async def test_graceful_stop_hands_back_in_order(redis_url: str, redis_client: Redis):
    app = App(redis_url, shutdown_timeout=0.5)
    started: list[str] = []
    cancelled: list[str] = []

    @app.task("stop", concurrency=2)
    async def stop(body: str) -> None:
        started.append(body)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(body)
            raise

    bodies = [f"s{i}" for i in range(8)]
    await app.enqueue_many("stop", bodies)
    async with app:
        await wait_until(lambda: len(started) == 2, what="2 running jobs")
        assert await redis_client.llen("stop") == 0  # the rest waits in the local buffer
    assert sorted(cancelled) == ["s0", "s1"]
    assert await processing_lists(redis_client, "stop") == {}
    assert await redis_client.zcard("{stop}:consumers") == 0
    queue = [parse_task_item(x) for x in reversed(await redis_client.lrange("stop", 0, -1))]
    # Next taken first: the interrupted jobs, then the unstarted ones, all in fetch order.
    assert [json.loads(i.raw)["body"] for i in queue] == bodies
    # An interrupted run counts as a delivery (it ran, like a crash); an unstarted one does not.
    assert [i.attempts for i in queue] == [1, 1, 0, 0, 0, 0, 0, 0]

    again = App(redis_url)
    finished: list[str] = []

    @again.task("stop", concurrency=1)
    async def stop_again(body: str) -> None:
        finished.append(body)

    async with again:
        await wait_until(lambda: len(finished) == 8, what="all 8 jobs")
    assert finished == bodies


async def test_stop_with_an_empty_queue_is_prompt(
    redis_url: str, redis_client: Redis, long_blocks: float
):
    app = App(redis_url)

    @app.task("idle")
    async def idle(body: str) -> None:
        pass

    await app.start()
    try:
        await until_blocked(redis_client, "the consumer parked in a blocking read")
    finally:
        # The stop does not wait for the blocking read to end.
        await asyncio.wait_for(app.aclose(), long_blocks / 2)


# outages ------------------------------------------------------------------------------------
async def test_redis_restart_loses_nothing(
    redis_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
):
    server = redis_server_factory(appendonly=True)
    app = App(server.url)
    done: list[str] = []

    @app.task("outage", concurrency=4, lease=2.0)
    async def outage(body: str) -> None:
        await asyncio.sleep(0.005)
        done.append(body)

    caplog.set_level(logging.WARNING, logger="aioredq")
    first = [f"a{i}" for i in range(400)]
    async with app:
        await app.enqueue_many("outage", first)
        await wait_until(lambda: len(done) >= 100, what="100 jobs")
        server.kill()  # a crash: no shutdown, then down long enough to be noticed
        await asyncio.sleep(2.0)
        await asyncio.to_thread(server.start)  # reloads the AOF (appendfsync always)
        await wait_until(lambda: set(done) >= set(first), what="every job after the restart")
        await app.enqueue_many("outage", ["after"])
        await wait_until(lambda: "after" in done, what="a job enqueued after the restart")
        client = Redis.from_url(server.url)
        try:
            await wait_until(lambda: nothing_held(client, "outage"), what="acks")
            assert await client.llen("outage") == 0
        finally:
            await client.aclose()
    print(f"\nredis restart: {len(done) - len(first) - 1} duplicate run(s)")
    assert not [r for r in caplog.records if r.exc_info]  # no tracebacks
    down = [r.getMessage().split(":")[0] for r in caplog.records if "unavailable" in r.getMessage()]
    assert down, "the outage was not reported"
    assert len(down) == len(set(down)), f"more than one warning per loop: {down}"


async def test_outage_longer_than_the_lease_takes_nobodys_work(
    redis_server_factory: ServerFactory,
):
    """Leases run out in Redis while it is down. When it is back, a consumer gives the others
    time to reconnect and renew theirs before it declares anyone dead."""
    server = redis_server_factory(appendonly=True)
    app = App(server.url)
    runs: list[str] = []

    @app.task("lease", lease=1.0)
    async def lease(body: str) -> None:
        runs.append(body)

    client = Redis.from_url(server.url)
    try:
        # another consumer, alive but slow to reconnect after the outage
        other = QueueTransport(client, "lease", "other")
        async with app:
            await client.lpush("lease", "held by the other")
            await other.fetch(1, 2000, "other:1:", 1)
            server.kill()
            await asyncio.sleep(2.5)  # every lease in Redis has run out
            await asyncio.to_thread(server.start)
            await client.connection_pool.disconnect()  # the test's own stale connection
            await asyncio.sleep(4.0)  # the app is back long since (its backoff is under 2 s)
            assert not await other.heartbeat(1000)  # still registered: nobody took its work
            assert await client.llen("{lease}:processing:other") == 1
            await app.enqueue("lease", "after")
            await wait_until(lambda: "after" in runs, what="the app to be serving")
        assert runs == ["after"]
    finally:
        await client.aclose()


async def test_killed_connections_lose_nothing(redis_url: str, redis_client: Redis):
    app = App(redis_url)
    done: list[str] = []

    @app.task("killed", concurrency=8, batch=20)
    async def killed(body: str) -> None:
        await asyncio.sleep(0.002)
        done.append(body)

    bodies = [f"k{i}" for i in range(3000)]
    async with app:
        await app.enqueue_many("killed", bodies)
        for _ in range(5):
            await asyncio.sleep(0.15)
            await redis_client.client_kill_filter(_type="normal", skipme=True)
        await wait_until(lambda: set(done) == set(bodies), what="every job")
        await wait_until(lambda: nothing_held(redis_client, "killed"), what="acks")
    assert await redis_client.llen("killed") == 0


async def test_a_dead_letter_refused_by_redis_is_kept_until_it_can_be_written(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)

    @app.task("refused", max_attempts=1)
    async def refused(body: str) -> None:
        raise ValueError("always")

    async def held() -> int:
        return sum(len(v) for v in (await processing_lists(redis_client, "refused")).values())

    # Another program put a string where the dead letters go: settling must not remove the
    # item and then fail to write its letter.
    await redis_client.set("{refused}:dead", "not a list")
    async with app:
        await app.enqueue("refused", "p1")
        await wait_until(async_eq(held, 1), what="the item taken")
        await asyncio.sleep(0.5)  # settle attempts are refused meanwhile
        assert await held() == 1
        await redis_client.delete("{refused}:dead")
        await wait_until(
            async_eq(lambda: redis_client.llen("{refused}:dead"), 1), what="the dead letter"
        )
    [letter] = letters(await redis_client.lrange("{refused}:dead", 0, -1))
    assert json.loads(letter["body"])["body"] == "p1" and letter["error"] == "ValueError: always"
    assert await held() == 0
