"""``@app.stream``: consumer groups and tails against a real Redis (and memory://)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio
from pydantic import BaseModel

from aioredq import (
    AioredqError,
    App,
    Backoff,
    ConfigurationError,
    Message,
    MessageTooLarge,
    Reject,
    Retry,
)
from aioredq._stream import group_lag
from aioredq._transports.stream import RELEASED_IDLE_MS, StreamTransport

WAIT = 20.0


class Notification(BaseModel):
    type: str
    user: int


class Inner(BaseModel):
    tags: list[str]
    score: float


class Outer(BaseModel):
    name: str
    inner: Inner
    count: int


@pytest.fixture(autouse=True)
def no_internal_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test whose consumers logged a traceback (an upkeep or processing failure)."""
    yield
    broken = [
        r.getMessage()
        for r in caplog.records
        if r.name == "aioredq" and r.levelno >= logging.ERROR and r.exc_info
    ]
    assert not broken, broken


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = WAIT, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


async def pending(client: redis.asyncio.Redis, stream: str, group: str) -> int:
    return int((await client.xpending(stream, group))["pending"])


async def consumer_names(client: redis.asyncio.Redis, stream: str, group: str) -> set[str]:
    return {c["name"].decode() for c in await client.xinfo_consumers(stream, group)}


async def dead_letters(client: redis.asyncio.Redis, stream: str) -> list[dict[str, str]]:
    rows = await client.xrange(f"{{{stream}}}:dead")
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]


# end to end -----------------------------------------------------------------------------------
async def test_every_producer_reaches_a_typed_handler(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    got: list[tuple[Notification, Message]] = []

    @app.stream("notifications", group="senders")
    async def notify(event: Notification, message: Message) -> None:
        got.append((event, message))

    async with app:
        await app.append("notifications", {"type": "email", "user": 1})
        await app.append_many(
            "notifications", [Notification(type="sms", user=2), {"type": "push", "user": 3}]
        )
        await notify.append(Notification(type="email", user=4))
        foreign_id = (
            await redis_client.execute_command(
                "XADD", "notifications", "*", "type", "email", "user", "42"
            )
        ).decode()
        await wait_until(lambda: len(got) == 5, what="5 entries handled")
        await wait_until(
            _is_zero(lambda: pending(redis_client, "notifications", "senders")),
            what="XPENDING 0",
        )

    assert sorted((e.type, e.user) for e, _ in got) == [
        ("email", 1),
        ("email", 4),
        ("email", 42),
        ("push", 3),
        ("sms", 2),
    ]
    event, message = next((e, m) for e, m in got if m.id == foreign_id)
    assert event == Notification(type="email", user=42)
    assert message.fields == {"type": "email", "user": "42"}
    assert (message.kind, message.stream, message.group, message.attempt) == (
        "stream",
        "notifications",
        "senders",
        1,
    )
    assert await pending(redis_client, "notifications", "senders") == 0


def _is_zero(count: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await count() == 0

    return check


async def test_wire_format_is_flat_fields(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    async with App(redis_url) as app:
        flat = await app.append(
            "wire",
            {"s": "text", "n": 5, "b": True, "f": 1.5, "none": None, "nested": {"a": [1, 2]}},
        )
        model = await app.append("wire", Notification(type="email", user=42))
        listed = await app.append("wire", [1, 2, 3])
        text = await app.append("wire", "hello")
        number = await app.append("wire", 7)
    rows = {
        i.decode(): {k.decode(): v.decode() for k, v in f.items()}
        for i, f in await redis_client.xrange("wire")
    }
    assert rows[flat] == {
        "s": "text",
        "n": "5",
        "b": "true",
        "f": "1.5",
        "none": "null",
        "nested": '{"a":[1,2]}',
    }
    assert rows[model] == {"type": "email", "user": "42"}
    assert rows[listed] == {"body": "[1,2,3]"}
    assert rows[text] == {"body": "hello"}
    assert rows[number] == {"body": "7"}


async def test_nested_model_round_trips(redis_url: str) -> None:
    app = App(redis_url)
    got: list[Outer] = []

    @app.stream("nested", group="g")
    async def handle(body: Outer) -> None:
        got.append(body)

    sent = Outer(name="n", inner=Inner(tags=["a", "b"], score=0.5), count=3)
    async with app:
        await handle.append(sent)
        await wait_until(lambda: len(got) == 1)
    assert got == [sent]


async def test_consumer_names_are_unique_per_app(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    apps = [App(redis_url), App(redis_url)]
    for app in apps:

        @app.stream("names", group="g")
        async def handle(body: dict[str, Any]) -> None:
            pass

    async with apps[0], apps[1]:
        # A consumer joins the group with its first read.
        await wait_until(lambda: _has_count(consumer_names(redis_client, "names", "g"), 2))
        names = await consumer_names(redis_client, "names", "g")
    assert len(names) == 2
    for name in names:
        host, pid, suffix, handler = name.split(":")
        assert host and int(pid) == os.getpid() and re.fullmatch(r"[0-9a-f]{6}", suffix), name
        assert handler == "handle", name


# claiming -------------------------------------------------------------------------------------
async def test_dead_consumers_entries_are_claimed_and_deleted_ids_skipped(
    redis_url: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await redis_client.xgroup_create("claims", "g", "$", mkstream=True)
    ids = [(await redis_client.xadd("claims", {"n": str(n)})).decode() for n in range(5)]
    # A consumer takes every entry and dies holding them; one entry is then deleted.
    await redis_client.xreadgroup("g", "crashed", {"claims": ">"}, count=10)
    await redis_client.xdel("claims", ids[2])

    app = App(redis_url)
    got: dict[str, int] = {}

    @app.stream("claims", group="g", lease=0.5)
    async def handle(body: dict[str, str], message: Message) -> None:
        got[message.id] = message.attempt

    with caplog.at_level(logging.WARNING, logger="aioredq"):
        async with app:
            await wait_until(lambda: len(got) == 4, what="the 4 remaining entries")
            await wait_until(_is_zero(lambda: pending(redis_client, "claims", "g")))
            # Holding nothing now, the dead consumer is removed from the group.
            await wait_until(
                lambda: _lacks(consumer_names(redis_client, "claims", "g"), "crashed"),
                what="dead consumer removed",
            )
    assert got == {i: 2 for i in ids if i != ids[2]}  # XAUTOCLAIM counted a second delivery
    assert any("deleted" in r.getMessage() and ids[2] in r.getMessage() for r in caplog.records)
    # A clean stop leaves the group with no consumer at all.
    assert await consumer_names(redis_client, "claims", "g") == set()


async def _has_count(names: Awaitable[set[str]], count: int) -> bool:
    return len(await names) == count


async def _lacks(names: Awaitable[set[str]], name: str) -> bool:
    return name not in await names


async def test_idle_consumers_holding_nothing_are_removed(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.xgroup_create("ghosts", "g", "$", mkstream=True)
    await redis_client.execute_command("XGROUP", "CREATECONSUMER", "ghosts", "g", "ghost")
    app = App(redis_url)

    @app.stream("ghosts", group="g", lease=0.5)
    async def handle(body: dict[str, str]) -> None:
        pass

    async with app:
        await wait_until(
            lambda: _lacks(consumer_names(redis_client, "ghosts", "g"), "ghost"),
            what="ghost removed",
        )
        assert len(await consumer_names(redis_client, "ghosts", "g")) == 1
    assert await consumer_names(redis_client, "ghosts", "g") == set()


async def test_slow_handler_is_never_taken_over(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    runs: Counter[str] = Counter()
    held: dict[str, tuple[str, int]] = {}
    apps = [App(redis_url), App(redis_url)]
    for app in apps:

        @app.stream("slow", group="g", lease=1.0)
        async def handle(body: dict[str, str], message: Message) -> None:
            runs[message.id] += 1
            await asyncio.sleep(3.0)  # three leases
            # Still pending for the consumer that runs it, delivered once: nobody, not even
            # this consumer's own claiming of idle entries, took it over meanwhile.
            (row,) = await redis_client.xpending_range("slow", "g", message.id, message.id, 1)
            held[message.id] = (row["consumer"].decode(), row["times_delivered"])

    async with apps[0]:
        ids = await apps[0].append_many("slow", [{"n": str(n)} for n in range(4)])
        await wait_until(lambda: len(runs) == 4, what="all started")
        (owner,) = await consumer_names(redis_client, "slow", "g")
        async with apps[1]:  # a second consumer that would claim anything idle for 1 s
            await wait_until(lambda: len(held) == 4, what="all finished")
            await asyncio.sleep(1.5)
            assert await pending(redis_client, "slow", "g") == 0
    assert runs == {i: 1 for i in ids}
    assert held == {i: (owner, 1) for i in ids}


# failures -------------------------------------------------------------------------------------
async def test_failures_retry_with_backoff_then_dead_letter(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    attempts: list[tuple[int, float]] = []
    rejected: list[str] = []
    invalid: list[Notification] = []

    @app.stream("failing", group="g", max_deliveries=3, backoff=Backoff(base=0.2, factor=2, cap=5))
    async def always_fails(body: dict[str, str], message: Message) -> None:
        attempts.append((message.attempt, time.monotonic()))
        raise ValueError("boom")

    @app.stream("rejecting", group="g")
    async def rejects(body: dict[str, str], message: Message) -> None:
        rejected.append(message.id)
        raise Reject("not for us")

    @app.stream("typed", group="g")
    async def typed(event: Notification) -> None:
        invalid.append(event)

    async with app:
        fail_id = await app.append("failing", {"to": "x", "n": 1})
        reject_id = await rejects.append({"a": "b"})
        bad_id = (
            await redis_client.execute_command("XADD", "typed", "*", "type", "e", "user", "x")
        ).decode()
        for stream in ("failing", "rejecting", "typed"):
            await wait_until(lambda s=stream: _dead_count(redis_client, s, 1), what=stream)
            await wait_until(_is_zero(lambda s=stream: pending(redis_client, s, "g")))
        await asyncio.sleep(0.3)  # nothing runs again after the dead letter

    assert [a for a, _ in attempts] == [1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # base 0.2 doubling, jitter draws the upper half
    (letter,) = await dead_letters(redis_client, "failing")
    assert letter["original_id"] == fail_id
    assert letter["group"] == "g"
    assert letter["error"] == "ValueError: boom"
    assert letter["deliveries"] == "3"
    assert json.loads(letter["fields"]) == {"to": "x", "n": "1"}
    assert datetime.fromisoformat(letter["failed_at"]).tzinfo is not None
    assert await redis_client.xlen("failing") == 1  # the log keeps the entry

    assert rejected == [reject_id]
    (letter,) = await dead_letters(redis_client, "rejecting")
    assert (letter["error"], letter["deliveries"]) == ("Reject: not for us", "1")

    assert invalid == []  # the handler never ran
    (letter,) = await dead_letters(redis_client, "typed")
    assert letter["original_id"] == bad_id and letter["deliveries"] == "1"
    assert letter["error"].startswith("ValidationError") and "valid integer" in letter["error"]
    assert json.loads(letter["fields"]) == {"type": "e", "user": "x"}


async def test_oversized_foreign_entry_is_dead_lettered(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url, max_body_bytes=1000)
    ran: list[str] = []

    @app.stream("big", group="g")
    async def handle(body: dict[str, str]) -> None:
        ran.append(body["n"])

    with pytest.raises(MessageTooLarge):
        await app.append("big", {"blob": "x" * 2000})
    async with app:
        big_id = (await redis_client.xadd("big", {"n": "1", "blob": "x" * 2000})).decode()
        await redis_client.xadd("big", {"n": "2"})
        await wait_until(lambda: _dead_count(redis_client, "big", 1))
        await wait_until(lambda: ran == ["2"])
        await wait_until(_is_zero(lambda: pending(redis_client, "big", "g")))
    (letter,) = await dead_letters(redis_client, "big")
    assert letter["original_id"] == big_id and letter["deliveries"] == "1"
    # Not copied: the letter has the entry's size in bytes, the entry stays in the stream.
    assert (letter["fields"], letter["size"]) == ("{}", str(1 + 1 + 4 + 2000))
    assert [i.decode() for i, _ in await redis_client.xrange("big", big_id, big_id)] == [big_id]
    assert (
        letter["error"].startswith("MessageTooLarge") and "max_body_bytes=1000" in letter["error"]
    )


async def _dead_count(client: redis.asyncio.Redis, stream: str, count: int) -> bool:
    return int(await client.xlen(f"{{{stream}}}:dead")) == count


async def test_retry_delay_does_not_hold_a_slot(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    runs: list[tuple[str, int, float]] = []

    @app.stream("later", group="g", concurrency=1)
    async def handle(body: dict[str, str], message: Message) -> None:
        runs.append((body["n"], message.attempt, time.monotonic()))
        if body["n"] == "first" and message.attempt == 1:
            raise Retry(delay=1.0)

    async with app:
        await app.append_many("later", [{"n": "first"}, {"n": "second"}])
        await wait_until(lambda: len(runs) == 3, what="3 runs")
        await wait_until(_is_zero(lambda: pending(redis_client, "later", "g")))
    assert [(n, a) for n, a, _ in runs] == [("first", 1), ("second", 1), ("first", 2)]
    assert runs[2][2] - runs[0][2] >= 0.95


# trimming, start positions, tails -------------------------------------------------------------
async def test_maxlen_trims_every_append(redis_url: str, redis_client: redis.asyncio.Redis) -> None:
    app = App(redis_url)

    @app.stream("trimmed", group="g", maxlen=100)
    async def handle(body: dict[str, str]) -> None:
        pass

    lengths = []
    for n in range(600):
        await app.append("trimmed", {"n": str(n)})
        if n % 50 == 49:
            lengths.append(int(await redis_client.xlen("trimmed")))
    for batch in range(10):
        await handle.append_many([{"n": str(batch * 100 + i)} for i in range(100)])
        lengths.append(int(await redis_client.xlen("trimmed")))
    await app.aclose()
    # MAXLEN ~ trims whole radix-tree nodes (100 entries each by default).
    assert all(100 <= n <= 200 for n in lengths[1:]), lengths


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("maxlen", [None, 10_000])
async def test_max_age_trims_old_entries_on_every_append(
    redis_url: str, redis_client: redis.asyncio.Redis, maxlen: int | None, single: bool
) -> None:
    app = App(redis_url)

    @app.stream("aged", group="g", max_age=60.0, maxlen=maxlen)
    async def handle(body: dict[str, str]) -> None:
        pass

    # 1000 entries from two hours ago, written by another program with explicit ids
    old_ms = int(time.time() * 1000) - 2 * 3600 * 1000
    pipe = redis_client.pipeline(transaction=False)
    for n in range(1000):
        pipe.xadd("aged", {"n": f"old{n}"}, id=f"{old_ms}-{n}")
    await pipe.execute()
    bodies = [{"n": f"new{n}"} for n in range(10)]
    if single:  # one XADD each (MINID ~ alone, or the script with both limits)
        ids = [await app.append("aged", one) for one in bodies]
    else:
        ids = await app.append_many("aged", bodies)
    await app.aclose()
    kept = await redis_client.xrange("aged")
    # MINID ~ trims whole radix-tree nodes (100 entries by default): a few old ones may stay.
    assert len(kept) < 110
    assert [i.decode() for i, _ in kept[-10:]] == ids


@pytest.mark.parametrize("memory", [False, True])
async def test_a_single_append_refused_writes_nothing_and_says_why(
    redis_url: str, memory: bool
) -> None:
    app = App("memory://" if memory else redis_url)
    client = app.connection.command
    try:
        await client.set("not-a-stream", "text")
        with pytest.raises(AioredqError, match="WRONGTYPE"):
            await app.append("not-a-stream", {"n": "1"})
        with pytest.raises(AioredqError, match="WRONGTYPE"):
            await app.append("not-a-stream", {"n": "1"}, maxlen=10)
        assert await client.get("not-a-stream") == b"text"
        entry_id = await app.append("single", {"n": "1"}, maxlen=10)
        assert await client.xrange("single") == [(entry_id.encode(), {b"n": b"1"})]
    finally:
        await client.delete("not-a-stream", "single")
        await app.aclose()


async def test_lag_is_available_from_the_app(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)

    @app.stream("lagging", group="g")
    async def handle(body: dict[str, str]) -> None:
        pass

    @app.task("not-a-stream")
    async def job(body: str) -> None:
        pass

    assert await app.lag("handle") is None  # no group yet
    await redis_client.xgroup_create("lagging", "g", "$", mkstream=True)
    await app.append_many("lagging", [{"n": str(n)} for n in range(7)])
    assert await app.lag("handle") == 7
    assert await app.lag("lagging") == 7  # by key too
    with pytest.raises(ConfigurationError):
        await app.lag("job")
    await app.aclose()


async def test_start_positions_groups_and_tail(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    for n in range(3):
        await redis_client.xadd("events", {"n": f"old{n}"})
    app = App(redis_url)
    seen: dict[str, list[str]] = {"latest": [], "earliest": [], "tail": []}

    @app.stream("events", group="latest")
    async def from_latest(body: dict[str, str]) -> None:
        seen["latest"].append(body["n"])

    @app.stream("events", group="earliest", start="earliest")
    async def from_earliest(body: dict[str, str]) -> None:
        seen["earliest"].append(body["n"])

    @app.stream("events")
    async def tail(body: dict[str, str]) -> None:
        seen["tail"].append(body["n"])

    async with app:
        await app.append_many("events", [{"n": "new0"}, {"n": "new1"}])
        await wait_until(
            lambda: len(seen["earliest"]) == 5 and len(seen["latest"]) == 2 == len(seen["tail"])
        )
        await asyncio.sleep(0.2)
        groups = {g["name"].decode() for g in await redis_client.xinfo_groups("events")}
    assert sorted(seen["earliest"]) == ["new0", "new1", "old0", "old1", "old2"]
    assert seen["latest"] == ["new0", "new1"]
    assert seen["tail"] == ["new0", "new1"]
    assert groups == {"latest", "earliest"}  # the tail reads without a group: no ack, no PEL


# recovery from deleted keys -------------------------------------------------------------------
async def test_deleted_group_and_stream_are_recreated(
    redis_url: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(redis_url)
    got: list[str] = []

    @app.stream("fragile", group="g")
    async def handle(body: dict[str, str]) -> None:
        got.append(body["n"])

    def recreations() -> int:
        return sum("recreated" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="aioredq"):
        async with app:
            await app.append("fragile", {"n": "before"})
            await wait_until(lambda: got == ["before"])
            await redis_client.xgroup_destroy("fragile", "g")
            await app.append("fragile", {"n": "after-destroy"})
            await wait_until(lambda: "after-destroy" in got, what="entry after XGROUP DESTROY")
            await wait_until(lambda: recreations() == 1)
            await app.append("fragile", {"n": "after-recreate"})
            await wait_until(lambda: "after-recreate" in got)

            await redis_client.delete("fragile")
            await wait_until(lambda: recreations() == 2, what="recreated after DEL")
            await app.append("fragile", {"n": "after-del"})
            await wait_until(lambda: "after-del" in got, what="entry after DEL")
            await wait_until(_is_zero(lambda: pending(redis_client, "fragile", "g")))
    assert got == ["before", "after-destroy", "after-recreate", "after-del"]
    assert recreations() == 2


# graceful stop --------------------------------------------------------------------------------
def _worker_app(url: str, seen: list[tuple[str, str, int]], who: str, **options: Any) -> App:
    app = App(url, shutdown_timeout=5.0)

    @app.stream("backlog", group="g", lease=30.0, **options)
    async def handle(body: dict[str, str], message: Message) -> None:
        await asyncio.sleep(0.2)
        seen.append((who, message.id, message.attempt))

    return app


async def test_graceful_stop_hands_back_unstarted_entries_at_once(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    seen: list[tuple[str, str, int]] = []
    first = _worker_app(redis_url, seen, "first", concurrency=1)
    second = _worker_app(redis_url, seen, "second", concurrency=8)
    await first.start()
    ids = await first.append_many("backlog", [{"n": str(n)} for n in range(20)])
    await wait_until(lambda: len(seen) >= 1, what="first app busy")
    async with second:
        await first.aclose()  # the running entry finishes; the rest are released
        # Released entries are claimable at once: all are handled well before the 30 s
        # lease would have freed them.
        await wait_until(lambda: len(seen) == 20, timeout=25, what="all 20 handled")
        await wait_until(_is_zero(lambda: pending(redis_client, "backlog", "g")))
    # The handed-back delivery is not counted.
    assert sorted(i for _, i, _ in seen) == sorted(ids)
    assert all(attempt == 1 for _, _, attempt in seen)
    assert {who for who, _, _ in seen} == {"first", "second"}


async def test_work_interrupted_at_shutdown_is_handed_back(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    runs: list[tuple[str, int]] = []
    stuck = App(redis_url, shutdown_timeout=0.5)
    rescuer = App(redis_url)

    @stuck.stream("stuck", group="g", lease=30.0)
    async def slow(body: dict[str, str], message: Message) -> None:
        runs.append(("stuck", message.attempt))
        await asyncio.sleep(60)

    @rescuer.stream("stuck", group="g", lease=30.0)
    async def fast(body: dict[str, str], message: Message) -> None:
        runs.append(("rescuer", message.attempt))

    await stuck.start()
    entry_id = await stuck.append("stuck", {"n": "1"})
    await wait_until(lambda: runs == [("stuck", 1)])
    async with rescuer:
        await stuck.aclose()  # cancels the handler after shutdown_timeout
        await wait_until(lambda: len(runs) == 2, timeout=15, what="taken over before the lease")
        await wait_until(_is_zero(lambda: pending(redis_client, "stuck", "g")))
    assert runs[1] == ("rescuer", 2)  # the interrupted run counts as a delivery
    assert entry_id not in {
        letter["original_id"] for letter in await dead_letters(redis_client, "stuck")
    }


async def test_retry_backlog_is_capped_and_released_on_stop(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    failed: list[str] = []

    # capacity = concurrency + 2 * batch = 3, so at most 30 entries wait for a retry here
    @app.stream("capped", group="g", concurrency=1, batch=1)
    async def handle(body: dict[str, str], message: Message) -> None:
        failed.append(message.id)
        raise Retry(delay=60)

    ids = [(await redis_client.xadd("capped", {"n": str(n)})).decode() for n in range(50)]
    await redis_client.xgroup_create("capped", "g", "0")
    async with app:
        await wait_until(lambda: len(failed) >= 30, what="30 entries failed")
        await asyncio.sleep(1.0)
        (group,) = await redis_client.xinfo_groups("capped")
        held = len(failed)
        # No new entry is read once 30 wait (the 3 the pool holds may still come in).
        assert 30 <= held <= 33 and group["pending"] == held and group["lag"] == 50 - held
    # Stopped: the waiting entries are claimable by anyone at once, their delivery counted.
    rows = await redis_client.xpending_range("capped", "g", "-", "+", 100)
    assert [r["message_id"].decode() for r in rows] == ids[:held]
    assert all(r["times_delivered"] == 1 for r in rows)
    assert all(r["time_since_delivered"] >= RELEASED_IDLE_MS - 60_000 for r in rows)


# lag ------------------------------------------------------------------------------------------
async def test_lag_is_reported_and_warned(
    redis_url: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await redis_client.xadd("lagging", {"n": "0"})
    for n in range(1, 50):
        await redis_client.xadd("lagging", {"n": str(n)})
    app = App(redis_url)
    release = asyncio.Event()

    @app.stream("lagging", group="g", start="earliest", lag_warning=10, concurrency=1, batch=1)
    async def handle(body: dict[str, str]) -> None:
        await release.wait()

    with caplog.at_level(logging.WARNING, logger="aioredq"):
        async with app:
            await wait_until(lambda: any("lag" in r.getMessage() for r in caplog.records))
            lag = await group_lag(StreamTransport(redis_client, "lagging", "g"))
            release.set()
    assert lag is not None and 40 <= lag <= 50
    warning = next(r for r in caplog.records if "lag" in r.getMessage())
    assert warning.levelno == logging.WARNING and "over 10" in warning.getMessage()


async def test_lag_falls_back_when_redis_reports_nil(redis_client: redis.asyncio.Redis) -> None:
    await redis_client.xgroup_create("nil-lag", "g", "0", mkstream=True)
    ids = [await redis_client.xadd("nil-lag", {"n": str(n)}) for n in range(4)]
    await redis_client.xreadgroup("g", "c", {"nil-lag": ">"}, count=1)
    await redis_client.xdel("nil-lag", ids[2])  # an entry the group has not read yet
    (info,) = await redis_client.xinfo_groups("nil-lag")
    assert info["lag"] is None
    transport = StreamTransport(redis_client, "nil-lag", "g")
    assert await group_lag(transport) == 2
    assert await group_lag(StreamTransport(redis_client, "nil-lag", "nope")) is None


# the scripts and reply shapes -----------------------------------------------------------------
async def test_release_touch_and_claim_own_scripts(redis_client: redis.asyncio.Redis) -> None:
    await redis_client.xgroup_create("s", "g", "0", mkstream=True)
    ids = [(await redis_client.xadd("s", {"n": str(n)})).decode() for n in range(3)]
    mine = StreamTransport(redis_client, "s", "g", "me")
    other = StreamTransport(redis_client, "s", "g", "other")
    entries = await mine.read_group(10, None)
    assert [e.id for e in entries] == ids and entries[0].fields == {b"n": b"0"}

    # CLAIM_OWN counts a new delivery of entries still ours.
    (again,) = await mine.retry([ids[0]])
    assert (again.id, again.fields, again.deliveries) == (ids[0], {b"n": b"0"}, 2)
    assert await other.retry([ids[1]]) == []  # not theirs

    # RELEASE: idle far past any lease (an IDLE beyond the epoch would reset it to 0), and
    # the delivery count it is given.
    assert await mine.handback([(ids[0], 1), (ids[1], 0)]) == 2
    rows = {
        r["message_id"].decode(): r
        for r in await redis_client.xpending_range("s", "g", "-", "+", 10)
    }
    assert rows[ids[0]]["time_since_delivered"] >= RELEASED_IDLE_MS - 60_000
    assert (rows[ids[0]]["times_delivered"], rows[ids[1]]["times_delivered"]) == (1, 0)
    assert rows[ids[2]]["time_since_delivered"] < 60_000

    # Another consumer takes the released ones at once (and they count one delivery more).
    cursor, claimed, deleted, own = await other.recover(30_000, "0-0", 10)
    assert (cursor, [(e.id, e.deliveries) for e in claimed], deleted, own) == (
        "0-0",
        [(ids[0], 2), (ids[1], 1)],
        [],
        [],
    )
    # TOUCH keeps what is still ours and reports what is not.
    assert await mine.touch(ids) == [ids[0], ids[1]]
    assert await mine.handback([(ids[0], 1)]) == 0  # not ours any more


@pytest.mark.parametrize("protocol", [2, 3])
async def test_reads_understand_both_reply_protocols(redis_url: str, protocol: int) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, protocol=protocol)
    try:
        await client.xgroup_create("shapes", "g", "0", mkstream=True)
        ids = [(await client.xadd("shapes", {"n": str(n)})).decode() for n in range(3)]
        transport = StreamTransport(client, "shapes", "g", "c")
        read = await transport.read_group(10, 100)
        assert [(e.id, e.fields) for e in read] == [
            (i, {b"n": str(n).encode()}) for n, i in enumerate(ids)
        ]
        assert await transport.read_group(10, 10) == []
        tail = await transport.read_tail(ids[0], 10, None)
        assert [e.id for e in tail] == ids[1:]
        assert await transport.read_tail(ids[2], 10, 10) == []
        assert await group_lag(transport) == 0
    finally:
        await client.aclose()


# memory:// ------------------------------------------------------------------------------------
async def test_memory_backend_streams() -> None:
    app = App("memory://")
    got: list[tuple[Notification, int]] = []
    tail: list[str] = []

    @app.stream("notifications", group="senders", max_deliveries=2, backoff=Backoff(base=0.01))
    async def notify(event: Notification, message: Message) -> None:
        got.append((event, message.attempt))
        if event.user == 13:
            raise RuntimeError("unlucky")

    @app.stream("notifications")
    async def audit(body: dict[str, str]) -> None:
        tail.append(body["user"])

    async with app:
        await notify.append(Notification(type="email", user=42))
        await app.append("notifications", {"type": "sms", "user": 13})
        await wait_until(lambda: len(got) == 3 and len(tail) == 2, timeout=10)
        client = app.connection.command
        await wait_until(lambda: _dead_count(client, "notifications", 1), timeout=10)
        await wait_until(_is_zero(lambda: pending(client, "notifications", "senders")))
        (letter,) = await dead_letters(client, "notifications")
    assert sorted((e.user, a) for e, a in got) == [(13, 1), (13, 2), (42, 1)]
    assert sorted(tail) == ["13", "42"]
    assert (letter["error"], letter["deliveries"]) == ("RuntimeError: unlucky", "2")
