"""``memory://``: the whole App in-process on fakeredis, no server needed."""

from __future__ import annotations

from typing import Any

from _waiting import until
from pydantic import BaseModel

from aioredq import App, Backoff, Message


class Notification(BaseModel):
    type: str
    user: int


async def test_the_three_models_round_trip_in_memory() -> None:
    app = App("memory://")
    got: list[tuple[str, Any]] = []

    @app.subscribe("notice")
    async def notice(text: str) -> None:
        got.append(("notice", text))

    @app.subscribe(pattern="mail-*")
    async def mail(body: dict, message: Message) -> None:
        got.append(("mail", (message.channel, body)))

    @app.task("jobs", concurrency=4)
    async def job(body: Notification, message: Message) -> None:
        got.append(("job", (body, message.attempt)))

    @app.stream("notifications", group="senders")
    async def notify(event: Notification) -> None:
        got.append(("notify", event))

    @app.stream("notifications")
    async def audit(event: dict) -> None:
        got.append(("audit", event))

    async with app:
        assert await app.publish("notice", "deploying") == 1
        assert await app.publish("mail-eu", {"to": "x"}) == 1
        await job.enqueue(Notification(type="email", user=1))
        await app.enqueue_many("jobs", [{"type": "sms", "user": "2"}])
        await notify.append(Notification(type="push", user=3))
        await app.append("notifications", {"type": "email", "user": 4})
        await until(lambda: len(got) == 8, "8 receptions")
    assert sorted(got, key=repr) == sorted(
        [
            ("notice", "deploying"),
            ("mail", ("mail-eu", {"to": "x"})),
            ("job", (Notification(type="email", user=1), 1)),
            ("job", (Notification(type="sms", user=2), 1)),
            ("notify", Notification(type="push", user=3)),
            ("notify", Notification(type="email", user=4)),
            ("audit", {"type": "push", "user": "3"}),
            ("audit", {"type": "email", "user": "4"}),
        ],
        key=repr,
    )
    stats = app.stats()
    assert stats["job"].succeeded == 2 and stats["notify"].succeeded == 2


async def test_memory_retries_then_dead_letters() -> None:
    app = App("memory://")
    attempts: list[int] = []

    @app.task("jobs", max_attempts=2, backoff=Backoff(base=0.05, jitter=False))
    async def job(body: str, message: Message) -> None:
        attempts.append(message.attempt)
        raise RuntimeError("always")

    async with app:
        await job.enqueue("x")
        await until(lambda: app.stats()["job"].dead_lettered == 1, "the dead letter")
        # memory:// has no server to look at: read the app's own in-process data.
        letters = await app.connection.command.lrange("{jobs}:dead", 0, -1)
    assert attempts == [1, 2]
    assert len(letters) == 1 and b"RuntimeError: always" in letters[0]


async def test_producing_in_memory_without_consumers() -> None:
    app = App("memory://")
    msg_id = await app.enqueue("jobs", "x")
    entry_id = await app.append("events", {"a": 1})
    assert await app.publish("nobody", "x") == 0
    assert msg_id and entry_id
    client = app.connection.command
    assert await client.llen("jobs") == 1
    assert await client.xlen("events") == 1
    await app.aclose()


async def test_each_memory_app_has_its_own_data() -> None:
    first, second = App("memory://"), App("memory://")
    try:
        await first.enqueue("jobs", "x")
        assert await second.connection.command.llen("jobs") == 0
    finally:
        await first.aclose()
        await second.aclose()
