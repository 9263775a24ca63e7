"""The wire format (DESIGN section 4, binding): what aioredq writes, and what it accepts from
any other program, checked on a real Redis server with a plain redis-py client on the far side.

Task envelope: an item that aioredq enqueues is one JSON object, always starting with
``{"aioredq":1,"attempts":N,`` (the Lua scripts count deliveries by rewriting N in place), then
``"id"`` (the id ``enqueue`` returned), ``"enqueued_at"`` (Unix seconds, float), ``"headers"``
(only when given) and ``"body"`` (the body as JSON; a str body is a JSON string) or
``"body_b64"`` (base64 of a bytes body). Any item without that prefix is a foreign body.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from _waiting import WAIT, until, until_redis
from pydantic import BaseModel

from aioredq import App, Message, MessageTooLarge


class Notification(BaseModel):
    type: str
    user: int


class Order(BaseModel):
    id: int
    items: list[str]
    meta: dict[str, int]


@dataclasses.dataclass
class Point:
    x: int
    y: int


# what aioredq writes: pub/sub ---------------------------------------------------------------------
PUBLISHED = [
    ("hi", b"hi"),  # a str is its text, not the JSON string "hi"
    ("h\u00e9llo \u2603", "h\u00e9llo \u2603".encode()),
    ('{"already": "json"}', b'{"already": "json"}'),
    (b"\x00\xff raw", b"\x00\xff raw"),
    ({"a": 1, "b": [True, None]}, b'{"a":1,"b":[true,null]}'),
    (Notification(type="email", user=42), b'{"type":"email","user":42}'),
    (Point(1, 2), b'{"x":1,"y":2}'),
    (5, b"5"),
    (True, b"true"),
    (None, b"null"),
    ([1, "two"], b'[1,"two"]'),
]


async def test_published_bytes_on_the_wire(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("c")
    await pubsub.get_message(timeout=5)  # the subscribe confirmation
    app = App(redis_url)
    try:
        for body, _ in PUBLISHED:
            assert await app.publish("c", body) == 1
        assert await app.publish_many("c", [b for b, _ in PUBLISHED]) == len(PUBLISHED)
        received = []
        while len(received) < 2 * len(PUBLISHED):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WAIT)
            assert msg is not None, f"only {len(received)} messages arrived"
            received.append(msg["data"])
    finally:
        await app.aclose()
        await pubsub.aclose()
    expected = [wire for _, wire in PUBLISHED]
    assert received == expected + expected


# what aioredq writes: streams -------------------------------------------------------------------
async def test_stream_bodies_become_flat_fields(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    bodies: list[Any] = [
        {"n": 5, "flag": True, "off": False, "s": "text", "none": None, "f": 1.5},
        {"nested": {"a": [1, 2]}, "list": ["x"], "s": '{"looks": "like json"}'},
        Notification(type="email", user=42),
        Order(id=1, items=["a", "b"], meta={"k": 2}),
        Point(3, 4),
        "plain text",
        b"\x00\xff",
        [1, 2],
        7,
    ]
    try:
        ids = await app.append_many("events", bodies[:3])
        for body in bodies[3:]:
            ids.append(await app.append("events", body))
    finally:
        await app.aclose()
    entries = await redis_client.xrange("events")
    assert [i.decode() for i, _ in entries] == ids
    assert [fields for _, fields in entries] == [
        {
            b"n": b"5",
            b"flag": b"true",
            b"off": b"false",
            b"s": b"text",
            b"none": b"null",
            b"f": b"1.5",
        },
        {b"nested": b'{"a":[1,2]}', b"list": b'["x"]', b"s": b'{"looks": "like json"}'},
        {b"type": b"email", b"user": b"42"},
        {b"id": b"1", b"items": b'["a","b"]', b"meta": b'{"k":2}'},
        {b"x": b"3", b"y": b"4"},
        {b"body": b"plain text"},
        {b"body": b"\x00\xff"},
        {b"body": b"[1,2]"},
        {b"body": b"7"},
    ]


async def test_stream_maxlen_trims_on_append(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)

    @app.stream("events", group="g", maxlen=100)
    async def handler(body: dict) -> None: ...

    try:
        await app.append_many("events", [{"i": i} for i in range(1000)])
        await app.append("events", {"i": "last"})
    finally:
        await app.aclose()
    # MAXLEN ~ trims whole nodes (100 entries each by default): far fewer than 1001 remain.
    assert 100 <= await redis_client.xlen("events") <= 300


# what aioredq writes: task items ----------------------------------------------------------------
async def test_enqueued_items_are_json_envelopes(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    before = time.time()
    try:
        id_text = await app.enqueue("jobs", "hello", headers={"trace": "t-1"})
        id_model = await app.enqueue("jobs", Notification(type="sms", user=7))
        id_bytes = await app.enqueue("jobs", b"\x00\xff")
        id_many = await app.enqueue_many("jobs", [{"a": 1}, [1, 2]])
    finally:
        await app.aclose()
    raw = list(reversed(await redis_client.lrange("jobs", 0, -1)))  # oldest first
    assert len(raw) == 5
    for item in raw:
        assert item.startswith(b'{"aioredq":1,"attempts":0,')
    items = [json.loads(item) for item in raw]
    assert [i["id"] for i in items] == [id_text, id_model, id_bytes, *id_many]
    assert len(set(i["id"] for i in items)) == 5
    for item in items:
        assert before - 1 <= item["enqueued_at"] <= time.time() + 1
    assert items[0]["body"] == "hello" and items[0]["headers"] == {"trace": "t-1"}
    assert items[1]["body"] == {"type": "sms", "user": 7} and "headers" not in items[1]
    assert base64.b64decode(items[2]["body_b64"]) == b"\x00\xff" and "body" not in items[2]
    assert [items[3]["body"], items[4]["body"]] == [{"a": 1}, [1, 2]]
    assert set(items[0]) == {"aioredq", "attempts", "id", "enqueued_at", "headers", "body"}


async def test_delayed_items_wait_in_the_delayed_zset(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)

    @app.task("jobs")
    async def job(body: str) -> None: ...

    try:
        await app.enqueue("jobs", "later", delay=60)
        await job.enqueue_many(["batch"], delay=120)
        await app.enqueue("jobs", "at", at=datetime.now(UTC) + timedelta(hours=1))
    finally:
        await app.aclose()
    assert await redis_client.llen("jobs") == 0
    delayed = await redis_client.zrange("{jobs}:delayed", 0, -1, withscores=True)
    assert [json.loads(m)["body"] for m, _ in delayed] == ["later", "batch", "at"]
    now_ms = time.time() * 1000
    assert 50_000 < delayed[0][1] - now_ms <= 60_000
    assert 110_000 < delayed[1][1] - now_ms <= 120_000
    assert 3_500_000 < delayed[2][1] - now_ms <= 3_600_000


# foreign messages are first-class -----------------------------------------------------------------
async def test_foreign_task_items_reach_typed_handlers(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    got: dict[str, list[Any]] = {}

    def record(name: str, body: Any) -> None:
        got.setdefault(name, []).append(body)

    @app.task("text")
    async def text(body: str) -> None:
        record("text", body)

    @app.task("model")
    async def model(body: Notification) -> None:
        record("model", body)

    @app.task("mapping")
    async def mapping(body: dict) -> None:
        record("mapping", body)

    @app.task("number")
    async def number(body: int) -> None:
        record("number", body)

    @app.task("raw")
    async def raw(body: bytes) -> None:
        record("raw", body)

    @app.task("maybe")
    async def maybe(body: str | None) -> None:
        record("maybe", body)

    @app.task("points")
    async def points(body: list[Point]) -> None:
        record("points", body)

    async with app:
        await redis_client.lpush("text", "email:123", '"quoted"', "{not json")
        await redis_client.lpush("model", '{"type": "email", "user": "42"}')
        await redis_client.lpush("mapping", '{"a": [1, 2]}')
        await redis_client.lpush("number", "42")
        await redis_client.lpush("raw", b"\x00\xff\xfe not utf-8", b"plain")
        await redis_client.lpush("maybe", "42", "null")
        await redis_client.lpush("points", '[{"x": 1, "y": 2}]')
        await until(lambda: sum(map(len, got.values())) == 11, "11 foreign items")
    assert got == {
        "text": ["email:123", '"quoted"', "{not json"],
        "model": [Notification(type="email", user=42)],
        "mapping": [{"a": [1, 2]}],
        "number": [42],
        "raw": [b"\x00\xff\xfe not utf-8", b"plain"],
        "maybe": ["42", None],
        "points": [[Point(1, 2)]],
    }
    for queue in ("text", "model", "raw", "maybe"):
        assert await redis_client.llen(f"{{{queue}}}:dead") == 0


async def test_a_foreign_item_that_fails_to_decode_is_dead_lettered_as_it_was(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    ran: list[Any] = []

    @app.task("text")
    async def text(body: str) -> None:
        ran.append(body)

    @app.task("model")
    async def model(body: Notification) -> None:
        ran.append(body)

    async def dead_letters() -> int:
        return int(await redis_client.llen("{text}:dead")) + int(
            await redis_client.llen("{model}:dead")
        )

    async with app:
        await redis_client.lpush("text", b"\xff\xfe")
        await redis_client.lpush("model", b'{"type": "email", "user": "\xff"}', "nope")
        await until_redis(lambda: dead_letters(), 3, "3 dead letters")
        # The consumers survived bodies they could not read: they still work.
        await redis_client.lpush("text", "fine")
        await until(lambda: ran == ["fine"], "the next item")
    texts = [json.loads(x) for x in await redis_client.lrange("{text}:dead", 0, -1)]
    assert texts[0]["error"].startswith("UnicodeDecodeError")
    # the dead letter is JSON text; bytes that are not UTF-8 are kept exactly, in base64
    assert base64.b64decode(texts[0]["body_b64"]) == b"\xff\xfe"
    models = [json.loads(x) for x in await redis_client.lrange("{model}:dead", 0, -1)]
    errors = {m.get("body") or base64.b64decode(m["body_b64"]): m["error"] for m in models}
    assert errors["nope"].startswith("ValidationError: 1 validation error for Notification")
    assert errors[b'{"type": "email", "user": "\xff"}'].startswith("UnicodeDecodeError")
    assert all(m["attempts"] == 1 and m["queue"] in ("text", "model") for m in models + texts)
    for key in await redis_client.keys("{*}:processing:*"):
        assert await redis_client.llen(key) == 0


async def test_envelopes_written_by_other_programs_are_read(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    # Another language may write the envelope itself; metadata of the wrong type is ignored
    # rather than allowed to block the body.
    app = App(redis_url)
    got: list[tuple[Any, Message]] = []

    @app.task("jobs")
    async def job(body: dict, message: Message) -> None:
        got.append((body, message))

    good = {"aioredq": 1, "attempts": 0, "id": "ext-1", "enqueued_at": 1700000000.5}
    good |= {"headers": {"h": 1}, "body": {"n": 1}}
    odd = {"aioredq": 1, "attempts": 0, "id": "ext-2", "enqueued_at": "soon"}
    odd |= {"headers": "not a mapping", "body": {"n": 2}}
    async with app:
        for envelope in (good, odd):
            await redis_client.lpush("jobs", json.dumps(envelope, separators=(",", ":")))
        await until(lambda: len(got) == 2, "2 envelopes")
    (first, m1), (second, m2) = sorted(got, key=lambda g: g[1].id)
    assert (first, m1.id, m1.headers, m1.attempt) == ({"n": 1}, "ext-1", {"h": "1"}, 1)
    assert m1.enqueued_at == datetime.fromtimestamp(1700000000.5, UTC)
    assert (second, m2.id, m2.headers, m2.enqueued_at) == ({"n": 2}, "ext-2", {}, None)
    assert await redis_client.llen("{jobs}:dead") == 0


async def test_foreign_stream_entries_reach_typed_handlers(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    got: list[Any] = []

    @app.stream("notifications", group="g", start="earliest")
    async def notify(event: Notification) -> None:
        got.append(event)

    @app.stream("orders", group="g", start="earliest")
    async def order(event: Order) -> None:
        got.append(event)

    @app.stream("texts", group="g", start="earliest")
    async def text(body: str) -> None:
        got.append(body)

    @app.stream("blobs", group="g", start="earliest")
    async def blob(body: bytes) -> None:
        got.append(body)

    @app.stream("maps", group="g", start="earliest")
    async def mapping(body: dict[str, int]) -> None:
        got.append(body)

    async with app:
        await redis_client.xadd("notifications", {"type": "email", "user": "42"})
        await redis_client.xadd("orders", {"id": "7", "items": '["a"]', "meta": '{"k": 1}'})
        await redis_client.xadd("texts", {"body": "just text"})
        await redis_client.xadd("blobs", {"body": b"\x00\xff"})
        await redis_client.xadd("maps", {"a": "1", "b": "2"})
        await until(lambda: len(got) == 5, "5 foreign entries")
    assert sorted(map(repr, got)) == sorted(
        map(
            repr,
            [
                Notification(type="email", user=42),
                Order(id=7, items=["a"], meta={"k": 1}),
                "just text",
                b"\x00\xff",
                {"a": 1, "b": 2},
            ],
        )
    )


async def test_foreign_published_messages_reach_typed_handlers(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    got: list[Any] = []

    @app.subscribe("text")
    async def text(body: str) -> None:
        got.append(body)

    @app.subscribe("model")
    async def model(body: Notification) -> None:
        got.append(body)

    @app.subscribe("raw")
    async def raw(body: bytes) -> None:
        got.append(body)

    async with app:
        await redis_client.publish("text", '"kept as is"')
        await redis_client.publish("model", '{"type": "push", "user": 3}')
        await redis_client.publish("raw", b"\xff")
        await until(lambda: len(got) == 3, "3 published messages")
    assert got == ['"kept as is"', Notification(type="push", user=3), b"\xff"]


# round trips through aioredq itself --------------------------------------------------------------
ROUND_TRIP: list[tuple[Any, Any]] = [
    (str, "hi"),
    (str, ""),
    (bytes, b"\x00\xff"),
    (int, 5),
    (dict, {"a": "text", "b": "2"}),
    (list[int], [1, 2, 3]),
    (Notification, Notification(type="email", user=1)),
    (Order, Order(id=2, items=["x", "y"], meta={"q": 3})),
    (Point, Point(5, 6)),
]


@pytest.mark.parametrize(("annotation", "body"), ROUND_TRIP, ids=lambda v: repr(v)[:30])
async def test_every_model_round_trips_bodies(redis_url: str, annotation: Any, body: Any) -> None:
    app = App(redis_url)
    got: dict[str, Any] = {}

    async def on_task(value):  # type: ignore[no-untyped-def]
        got["task"] = value

    async def on_stream(value):  # type: ignore[no-untyped-def]
        got["stream"] = value

    async def on_publish(value):  # type: ignore[no-untyped-def]
        got["subscribe"] = value

    for func in (on_task, on_stream, on_publish):
        func.__annotations__ = {"value": annotation}
    task = app.task("jobs")(on_task)
    stream = app.stream("events", group="g")(on_stream)
    sub = app.subscribe("news")(on_publish)
    async with app:
        await task.enqueue(body)
        await stream.append(body)
        await sub.publish(body)
        await until(lambda: len(got) == 3, "3 receptions")
    assert got == {"task": body, "stream": body, "subscribe": body}


async def test_a_stream_mapping_handler_gets_field_text(redis_url: str) -> None:
    # Stream fields are strings on the wire; a plain dict handler gets them as they are, and a
    # typed model does the conversion.
    app = App(redis_url)
    got: list[Any] = []

    @app.stream("events", group="g")
    async def raw(body: dict) -> None:
        got.append(body)

    @app.stream("events", group="typed")
    async def typed(body: dict[str, list[int] | int]) -> None:
        got.append(body)

    async with app:
        await app.append("events", {"a": [1, 2], "n": 5})
        await until(lambda: len(got) == 2, "2 receptions")
    assert sorted(got, key=repr) == [{"a": "[1,2]", "n": "5"}, {"a": [1, 2], "n": 5}]


# Message metadata -------------------------------------------------------------------------------
async def test_message_metadata_of_a_task(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    got: list[Message] = []

    @app.task("jobs")
    async def job(body: str, message: Message) -> None:
        got.append(message)

    async with app:
        before = datetime.now(UTC)
        msg_id = await job.enqueue("hello", headers={"trace": "abc"})
        await redis_client.lpush("jobs", "foreign text")
        await until(lambda: len(got) == 2, "2 tasks")
    ours, foreign = got
    assert ours.id == msg_id
    assert (ours.kind, ours.name, ours.queue, ours.channel) == ("task", "jobs", "jobs", "jobs")
    assert ours.attempt == 1
    assert ours.headers == {"trace": "abc"}
    assert ours.raw.startswith(b'{"aioredq":1,"attempts":0,') and b'"hello"' in ours.raw
    assert ours.enqueued_at is not None
    assert before - timedelta(seconds=1) <= ours.enqueued_at <= datetime.now(UTC)
    assert foreign.raw == b"foreign text"
    assert foreign.id and foreign.id != msg_id
    assert (foreign.attempt, foreign.headers, foreign.enqueued_at) == (1, {}, None)


async def test_message_metadata_of_a_stream_entry(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    got: list[Message] = []

    @app.stream("events", group="workers")
    async def event(body: Notification, message: Message) -> None:
        got.append(message)

    async with app:
        entry_id = await event.append(Notification(type="a", user=1))
        foreign_id = (await redis_client.xadd("events", {"type": "b", "user": "2"})).decode()
        await until(lambda: len(got) == 2, "2 entries")
    by_id = {m.id: m for m in got}
    ours = by_id[entry_id]
    assert (ours.kind, ours.name, ours.stream, ours.group) == (
        "stream",
        "events",
        "events",
        "workers",
    )
    assert ours.attempt == 1
    assert ours.fields == {"type": "a", "user": "1"}
    assert json.loads(ours.raw) == {"type": "a", "user": "1"}
    assert ours.enqueued_at == datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC)
    assert by_id[foreign_id].fields == {"type": "b", "user": "2"}


async def test_message_metadata_of_a_published_message(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    got: list[Message] = []

    @app.subscribe("news")
    async def news(body: str, message: Message) -> None:
        got.append(message)

    @app.subscribe(pattern="mail-*")
    async def mail(body: dict, message: Message) -> None:
        got.append(message)

    async with app:
        await app.publish("news", "hello")
        await redis_client.publish("mail-eu", '{"to": "x"}')
        await until(lambda: len(got) == 2, "2 messages")
    plain, pattern = sorted(got, key=lambda m: m.name)[::-1]
    assert (plain.kind, plain.name, plain.channel, plain.pattern) == (
        "subscribe",
        "news",
        "news",
        None,
    )
    assert (plain.raw, plain.attempt) == (b"hello", 1)
    assert (pattern.name, pattern.channel, pattern.pattern) == ("mail-*", "mail-eu", "mail-*")
    assert pattern.raw == b'{"to": "x"}'


# size limit -------------------------------------------------------------------------------------
async def test_bodies_over_max_body_bytes_are_refused_when_produced(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url, max_body_bytes=1000)
    big = "x" * 2000
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("news")
    try:
        with pytest.raises(MessageTooLarge, match=r"'news'.*max_body_bytes=1000"):
            await app.publish("news", big)
        with pytest.raises(MessageTooLarge, match="'jobs'"):
            await app.enqueue("jobs", {"text": big})
        with pytest.raises(MessageTooLarge, match="'events'"):
            await app.append("events", {"text": big})
        # A batch is refused as a whole: nothing of it is written.
        with pytest.raises(MessageTooLarge):
            await app.enqueue_many("jobs", ["small", big])
        with pytest.raises(MessageTooLarge):
            await app.append_many("events", [{"a": 1}, {"b": big}])
        with pytest.raises(MessageTooLarge):
            await app.publish_many("news", ["small", big.encode()])
        assert await app.publish("news", "x" * 900) == 1
    finally:
        await app.aclose()
    assert await redis_client.exists("jobs", "events") == 0
    messages = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # also long enough to see anything that should not come
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None:
            messages.append(msg["data"])
    await pubsub.aclose()
    assert messages == [b"x" * 900]


async def test_stream_bodies_are_measured_in_stored_bytes_on_both_sides(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url, max_body_bytes=1000)
    got: list[dict[str, str]] = []

    @app.stream("euro", group="g")
    async def handle(body: dict[str, str]) -> None:
        got.append(body)

    # 400 characters, 1,201 bytes: refused when produced, as the consumer would refuse it.
    with pytest.raises(MessageTooLarge, match="1201 bytes"):
        await app.append("euro", {"t": "€" * 400})
    with pytest.raises(MessageTooLarge, match="1003 bytes"):
        await app.append_many("euro", [{"€" * 334: "x"}])  # field names count too
    async with app:
        # Exactly the limit in bytes (1 + 999): accepted, and handled, not dead-lettered.
        await app.append("euro", {"t": "€" * 333})
        await until(lambda: len(got) == 1, "the entry at the limit handled")
    assert got == [{"t": "€" * 333}]
    assert await redis_client.xlen("euro") == 1
    assert await redis_client.exists("{euro}:dead") == 0


async def test_oversized_published_payloads_are_counted_and_logged(
    redis_url: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(redis_url, max_body_bytes=100)
    got: list[str] = []

    @app.subscribe("news")
    async def news(text: str) -> None:
        got.append(text)

    with caplog.at_level(logging.ERROR, logger="aioredq"):
        async with app:
            # Another program publishes one payload over the limit, then one within it.
            await until_redis(lambda: redis_client.publish("news", "€" * 34), 1, "subscribed")
            await redis_client.publish("news", "ok")
            await until(lambda: got == ["ok"], "the small message handled")
            stats = app.stats()["news"]
    assert (stats.received, stats.failed, stats.succeeded) == (2, 1, 1)
    (line,) = [r.getMessage() for r in caplog.records if "MessageTooLarge" in r.getMessage()]
    assert "102 bytes" in line and "max_body_bytes=100" in line


async def test_an_oversized_foreign_item_is_dead_lettered(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url, max_body_bytes=1000)
    ran: list[str] = []

    @app.task("jobs")
    async def job(body: str) -> None:
        ran.append(body)

    async with app:
        await redis_client.lpush("jobs", "x" * 5000)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not ran:
            if await redis_client.llen("{jobs}:dead"):
                break
            await asyncio.sleep(0.02)
    assert ran == []
    assert await redis_client.llen("{jobs}:dead") == 1
