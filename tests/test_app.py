"""The App end to end on a real Redis server: producing, running, lifespan, concurrency, and
what happens to messages whose handler fails."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio
from _waiting import until, until_redis
from fastapi import FastAPI
from pydantic import BaseModel

from aioredq import App, Backoff, ConfigurationError, InvalidBody, Message, Reject, Retry

NEVER = Backoff(base=3600.0, cap=3600.0, jitter=False)  # a retry that will not come in a test


class Job(BaseModel):
    n: int


async def in_flight(client: redis.asyncio.Redis, queue: str) -> int:
    """Items held in every processing list of ``queue``."""
    total = 0
    async for key in client.scan_iter(match=f"{{{queue}}}:processing:*"):
        total += int(await client.llen(key))
    return total


async def pending(client: redis.asyncio.Redis, stream: str, group: str) -> int:
    return int((await client.xpending(stream, group))["pending"])


async def client_count(client: redis.asyncio.Redis) -> int:
    return len(await client.client_list())


# the three models through the public API ------------------------------------------------------
async def test_each_model_end_to_end(redis_url: str, redis_client: redis.asyncio.Redis) -> None:
    app = App(redis_url)
    got: dict[str, list[Any]] = {"notice": [], "job": [], "event": [], "tail": []}

    @app.subscribe("notice")
    async def notice(text: str) -> None:
        got["notice"].append(text)

    @app.task("jobs", concurrency=4)
    async def job(body: Job, message: Message) -> None:
        got["job"].append((body.n, message.attempt))

    @app.stream("events", group="workers")
    async def event(body: Job, message: Message) -> None:
        got["event"].append((body.n, message.id))

    @app.stream("events")  # no group: a tail of new entries
    async def tail(body: dict, message: Message) -> None:
        got["tail"].append((body["n"], message.group))

    async with app as running:
        assert running is app
        assert await app.publish("notice", "one") == 1
        assert await notice.publish("two") == 1
        assert await app.publish_many("notice", ["three", "four"]) == 2
        ids = [await app.enqueue("jobs", Job(n=1)), await job.enqueue({"n": 2})]
        ids += await app.enqueue_many("jobs", [Job(n=3), {"n": 4}])
        ids += await job.enqueue_many([Job(n=5)])
        entries = [await app.append("events", Job(n=1)), await event.append({"n": 2})]
        entries += await app.append_many("events", [Job(n=3)])
        entries += await event.append_many([{"n": 4}])
        await until(
            lambda: [len(got[k]) for k in ("notice", "job", "event", "tail")] == [4, 5, 4, 4],
            "every message",
        )
        stats = app.stats()
    assert sorted(got["notice"]) == ["four", "one", "three", "two"]
    assert sorted(got["job"]) == [(n, 1) for n in range(1, 6)]
    assert sorted(got["event"]) == sorted(zip(range(1, 5), entries, strict=True))
    assert sorted(got["tail"]) == [(str(n), None) for n in range(1, 5)]  # fields are text
    assert len(set(ids)) == 5 and all(isinstance(i, str) and i for i in ids)
    assert stats["job"].succeeded == 5 and stats["event"].succeeded == 4
    assert stats["notice"].received == 4
    # Everything was acknowledged: nothing is left in flight, pending or queued.
    assert await redis_client.llen("jobs") == 0
    assert await in_flight(redis_client, "jobs") == 0
    assert await pending(redis_client, "events", "workers") == 0
    assert await redis_client.exists("{jobs}:dead", "{events}:dead") == 0


async def test_producing_needs_no_running_consumers_and_aclose_releases_connections(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    baseline = await client_count(redis_client)
    app = App(redis_url)

    @app.task("jobs")
    async def job(body: str) -> None: ...

    assert await client_count(redis_client) == baseline  # declaring connects nothing
    msg_id = await job.enqueue("hello")
    await app.enqueue("jobs", "world", delay=60)
    entry_id = await app.append("events", {"a": 1})
    assert await app.publish("nobody", "x") == 0
    assert await client_count(redis_client) > baseline
    await app.aclose()
    await until_redis(lambda: client_count(redis_client), baseline, "connections released")
    items = await redis_client.lrange("jobs", 0, -1)
    assert [json.loads(i)["id"] for i in items] == [msg_id]
    assert await redis_client.zcard("{jobs}:delayed") == 1
    assert [e[0].decode() for e in await redis_client.xrange("events")] == [entry_id]
    # The app can be used again after aclose(), and closed again.
    await app.enqueue("jobs", "again")
    assert await redis_client.llen("jobs") == 2
    await app.aclose()
    await app.aclose()
    await until_redis(lambda: client_count(redis_client), baseline, "connections released")


# URL precedence ---------------------------------------------------------------------------------
def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def test_explicit_url_beats_the_environment(
    redis_url: str, redis_client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOREDQ_URL", closed_port_url())
    app = App(redis_url)
    try:
        await app.enqueue("jobs", "x")
    finally:
        await app.aclose()
    assert await redis_client.llen("jobs") == 1


async def test_environment_url_is_used_without_an_explicit_one(
    redis_url: str, redis_client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOREDQ_URL", redis_url)
    app = App()
    try:
        await app.enqueue("jobs", "x")
    finally:
        await app.aclose()
    assert app.url == redis_url
    assert await redis_client.llen("jobs") == 1


@pytest.mark.parametrize("env", [None, ""])
def test_default_url_without_environment(monkeypatch: pytest.MonkeyPatch, env: str | None) -> None:
    # Only the resolved URL is checked: the suite never talks to a server it did not start.
    if env is None:
        monkeypatch.delenv("AIOREDQ_URL", raising=False)
    else:
        monkeypatch.setenv("AIOREDQ_URL", env)
    assert App().url == "redis://localhost:6379/0"


# lifespan ---------------------------------------------------------------------------------------
async def test_lifespan_yields_none_and_runs_consumers_meanwhile(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    got: list[str] = []

    @app.task("jobs")
    async def job(body: str) -> None:
        got.append(body)

    api = FastAPI(lifespan=app.lifespan)
    async with api.router.lifespan_context(api) as state:
        assert state is None
        await job.enqueue("during")
        await until(lambda: got == ["during"], "the job sent during the lifespan")
    # After the lifespan the consumers are stopped: a new job waits in the queue.
    await job.enqueue("after")
    await asyncio.sleep(0.5)
    assert got == ["during"]
    assert await redis_client.llen("jobs") == 1
    await app.aclose()


async def test_app_nests_inside_a_users_own_lifespan(redis_url: str) -> None:
    app = App(redis_url)
    got: list[str] = []

    @app.subscribe("news")
    async def news(body: str) -> None:
        got.append(body)

    async def lifespan(_: FastAPI) -> Any:
        async with app:
            yield {"aioredq": app}

    import contextlib

    api = FastAPI(lifespan=contextlib.asynccontextmanager(lifespan))
    async with api.router.lifespan_context(api) as state:
        assert state == {"aioredq": app}
        assert await app.publish("news", "hello") == 1
        await until(lambda: got == ["hello"], "the published message")
    try:
        assert await app.publish("news", "gone") == 0  # unsubscribed on exit
    finally:
        await app.aclose()


# concurrency ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["task", "stream", "subscribe"])
async def test_handlers_run_concurrently_up_to_the_limit(redis_url: str, kind: str) -> None:
    app = App(redis_url)
    release = asyncio.Event()
    running = 0
    peak = 0
    done = 0

    async def handler(body: int) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
        finally:
            running -= 1
            done += 1

    async def capped(body: int) -> None:
        await handler(body)

    if kind == "task":
        wide = app.task("wide", concurrency=8)(handler)
        narrow = app.task("narrow", concurrency=3)(capped)
        produce: Any = lambda h, n: h.enqueue_many(list(range(n)))  # noqa: E731
    elif kind == "stream":
        wide = app.stream("wide", group="g", concurrency=8)(handler)
        narrow = app.stream("narrow", group="g", concurrency=3)(capped)
        produce = lambda h, n: h.append_many(list(range(n)))  # noqa: E731
    else:
        wide = app.subscribe("wide", concurrency=8)(handler)
        narrow = app.subscribe("narrow", concurrency=3)(capped)
        produce = lambda h, n: h.publish_many(list(range(n)))  # noqa: E731

    async with app:
        await produce(wide, 8)
        # All 8 handlers are inside at the same time: each waits for the others.
        await until(lambda: running == 8, "8 handlers running at once")
        release.set()
        await until(lambda: done == 8, "8 handlers finished")
        release.clear()
        peak = 0
        await produce(narrow, 8)
        await until(lambda: running == 3, "3 handlers running")
        await asyncio.sleep(0.3)
        assert running == 3 and peak == 3  # never more than the limit
        release.set()
        await until(lambda: done == 16, "all handlers finished")


# failures ---------------------------------------------------------------------------------------
async def test_a_failing_task_is_kept_for_retry_and_the_worker_goes_on(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    ok: list[str] = []
    failures = 0

    @app.task("jobs", backoff=NEVER, max_attempts=3)
    async def job(body: str) -> None:
        nonlocal failures
        if body.startswith("boom"):
            failures += 1
            raise RuntimeError(f"cannot do {body}")
        ok.append(body)

    async with app:
        await job.enqueue_many([f"boom{i}" for i in range(5)])
        await until(lambda: failures == 5, "5 failures")
        await job.enqueue("fine")
        await until(lambda: ok == ["fine"], "the next job")
        await until_redis(lambda: redis_client.zcard("{jobs}:delayed"), 5, "5 delayed retries")
        stats = app.stats()["job"]
    assert (stats.failed, stats.retried, stats.succeeded, stats.dead_lettered) == (5, 5, 1, 0)
    # The failed items wait for their retry, with their delivery counted; none is lost.
    delayed = await redis_client.zrange("{jobs}:delayed", 0, -1)
    assert sorted(json.loads(d)["body"] for d in delayed) == [f"boom{i}" for i in range(5)]
    assert all(json.loads(d)["attempts"] == 1 for d in delayed)
    assert await redis_client.llen("{jobs}:dead") == 0
    assert await in_flight(redis_client, "jobs") == 0


async def test_a_failing_stream_entry_stays_pending_and_the_worker_goes_on(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    ok: list[str] = []
    failures = 0

    @app.stream("events", group="g", backoff=NEVER)
    async def event(body: str) -> None:
        nonlocal failures
        if body == "boom":
            failures += 1
            raise ValueError("bad event")
        ok.append(body)

    async with app:
        boom_id = await event.append("boom")
        await until(lambda: failures == 1, "the failure")
        await event.append_many(["a", "b"])
        await until(lambda: sorted(ok) == ["a", "b"], "the next entries")
        await until_redis(lambda: pending(redis_client, "events", "g"), 1, "1 pending entry")
    # Not acked, not dead: still pending in the group, so it will be delivered again.
    rows = await redis_client.xpending_range("events", "g", "-", "+", 10)
    assert [r["message_id"].decode() for r in rows] == [boom_id]
    assert await redis_client.xlen("{events}:dead") == 0


async def test_a_retried_task_runs_again_and_a_rejected_one_is_dead(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)
    attempts: list[tuple[str, int]] = []

    @app.task("jobs", backoff=NEVER)
    async def job(body: str, message: Message) -> None:
        attempts.append((body, message.attempt))
        if body == "again" and message.attempt < 3:
            raise Retry(delay=0)
        if body == "refuse":
            raise Reject("not for us")

    async with app:
        await job.enqueue_many(["again", "refuse"])
        await until_redis(lambda: redis_client.llen("{jobs}:dead"), 1, "the rejected job")
        await until(lambda: ("again", 3) in attempts, "the third attempt")
    assert sorted(attempts) == [("again", 1), ("again", 2), ("again", 3), ("refuse", 1)]
    letter = json.loads(await redis_client.lindex("{jobs}:dead", 0))
    assert letter["error"] == "Reject: not for us" and letter["attempts"] == 1


async def test_validation_failures_are_dead_lettered_at_once(
    redis_url: str, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(redis_url)
    ran: list[Any] = []

    @app.task("jobs", max_attempts=5)
    async def job(body: Job) -> None:
        ran.append(body)

    @app.stream("events", group="g", max_deliveries=5)
    async def event(body: Job) -> None:
        ran.append(body)

    @app.subscribe("news")
    async def news(body: Job) -> None:
        ran.append(body)

    caplog.set_level(logging.ERROR, logger="aioredq")
    async with app:
        await redis_client.lpush("jobs", '{"n": "not a number"}')
        dead_entry_of = (await redis_client.xadd("events", {"m": "1"})).decode()
        await redis_client.publish("news", "[]")
        await until_redis(lambda: redis_client.llen("{jobs}:dead"), 1, "the task dead letter")
        await until_redis(lambda: redis_client.xlen("{events}:dead"), 1, "the stream dead letter")
        await until(lambda: app.stats()["news"].failed == 1, "the pub/sub failure")
        # Good bodies still go through afterwards.
        await job.enqueue(Job(n=1))
        await event.append(Job(n=2))
        await news.publish(Job(n=3))
        await until(lambda: len(ran) == 3, "the valid bodies")
    assert sorted(j.n for j in ran) == [1, 2, 3]

    letter = json.loads(await redis_client.lindex("{jobs}:dead", 0))
    assert set(letter) == {"id", "queue", "body", "error", "attempts", "failed_at"}
    assert letter["queue"] == "jobs" and letter["attempts"] == 1
    assert letter["body"] == '{"n": "not a number"}'
    assert letter["error"].startswith("ValidationError: 1 validation error for Job")
    assert "\n" not in letter["error"]
    datetime.fromisoformat(letter["failed_at"])

    [(_, fields)] = await redis_client.xrange("{events}:dead")
    dead = {k.decode(): v.decode() for k, v in fields.items()}
    assert set(dead) == {"original_id", "group", "error", "deliveries", "failed_at", "fields"}
    assert (dead["original_id"], dead["group"], dead["deliveries"]) == (dead_entry_of, "g", "1")
    assert json.loads(dead["fields"]) == {"m": "1"}
    assert dead["error"].startswith("ValidationError")
    assert await pending(redis_client, "events", "g") == 0  # the dead entry was acked
    assert await in_flight(redis_client, "jobs") == 0
    assert any("dead-lettered: ValidationError" in r.getMessage() for r in caplog.records)
    stats = app.stats()
    assert stats["job"].dead_lettered == 1 and stats["event"].dead_lettered == 1


async def test_an_app_cannot_start_twice(redis_url: str) -> None:
    app = App(redis_url)

    @app.task("jobs")
    async def job(body: str) -> None: ...

    async with app:
        with pytest.raises(RuntimeError, match="already running"):
            await app.start()


@pytest.mark.parametrize("kind", ["task", "stream"])
async def test_a_refused_command_is_logged_once_and_the_consumer_recovers(
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    app = App(redis_url)
    seen: list[str] = []

    async def handle(body: str) -> None:
        seen.append(body)

    if kind == "task":
        app.task("work")(handle)
    else:
        app.stream("work", group="g")(handle)
    async with app:
        # Another program puts a string where the queue or stream should be: every read now
        # fails with WRONGTYPE (the group is recreated once the key is a stream again).
        await redis_client.delete("work")
        await redis_client.set("work", "not a queue")
        await until(
            lambda: any("failing (ResponseError" in r.getMessage() for r in caplog.records),
            "the error to be logged",
        )
        await asyncio.sleep(0.5)
        await redis_client.delete("work")
        if kind == "task":
            await app.enqueue("work", "after")
        else:
            await app.append("work", "after")
        await until(lambda: seen == ["after"], "the consumer to work again")
    failing = [r.getMessage() for r in caplog.records if "failing (ResponseError" in r.getMessage()]
    # once per loop that met the error (reads, and the stream's upkeep scripts), not per retry
    assert failing and len(failing) == len(set(failing)) <= 2
    assert any("working again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["task", "stream"])
async def test_a_message_aioredq_itself_failed_on_is_run_again(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from aioredq._stream import GroupConsumer
    from aioredq._task import TaskConsumer

    cls: Any = TaskConsumer if kind == "task" else GroupConsumer
    original = cls.call
    faults = [RuntimeError("injected fault")]

    def faulty(self: Any, job: Any) -> Any:
        if faults:
            raise faults.pop()
        return original(self, job)

    monkeypatch.setattr(cls, "call", faulty)
    app = App(redis_url)
    attempts: list[int] = []

    async def handle(body: str, message: Message) -> None:
        attempts.append(message.attempt)

    if kind == "task":
        app.task("work", lease=1.0)(handle)
    else:
        app.stream("work", group="g", lease=1.0)(handle)
    async with app:
        await (app.enqueue if kind == "task" else app.append)("work", "x")
        await until(lambda: attempts == [2], "the message to run again, its delivery counted")
        await until(lambda: app._idle(), "the app to be idle")


async def test_a_cancellation_raised_by_a_handler_is_a_failure_not_a_dead_worker(
    redis_url: str,
) -> None:
    app = App(redis_url)
    attempts: list[int] = []

    @app.task("cancels", concurrency=1, backoff=Backoff(base=0.01, jitter=False))
    async def cancels(body: str, message: Message) -> None:
        attempts.append(message.attempt)
        if message.attempt == 1:
            raise asyncio.CancelledError  # e.g. a library's own timeout leaking out

    async with app:
        await app.enqueue("cancels", "a")
        await until(lambda: attempts == [1, 2], "a retry after the leaked cancellation")
        await app.enqueue("cancels", "b")  # the one worker is still alive
        await until(lambda: attempts == [1, 2, 1], "the next job")


def test_an_app_runs_again_on_a_new_event_loop(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(redis_url)
    done: list[str] = []

    @app.task("again")
    async def again(body: str) -> None:
        done.append(body)

    async def one_run(n: int) -> None:
        async with app:
            await app.enqueue("again", f"run-{n}", delay=0.05)
            await until(lambda: f"run-{n}" in done, f"run {n}")
            # Idle now: the consumer waits in blocking reads, it does not spin.
            [consumer] = app._workers
            before = consumer._fetches  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)
            assert consumer._fetches - before < 10  # type: ignore[attr-defined]

    asyncio.run(one_run(1))
    asyncio.run(one_run(2))
    assert done == ["run-1", "run-2"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# handler-bound producing validates against the handler's own type ------------------------------
class Email(BaseModel):
    to: str


async def test_handler_bound_producing_validates_the_body_first(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = App(redis_url)

    @app.task("emails")
    async def send_email(job: Email) -> None: ...

    @app.stream("events", group="g")
    async def notify(event: dict[str, int]) -> None: ...

    @app.subscribe("notices")
    async def notice(count: int) -> None: ...

    listener = redis_client.pubsub()
    await listener.subscribe("notices")
    try:
        refused = [
            (send_email.enqueue({"too": "a@b.c"}), "send_email", "emails", "to; Field required"),
            (send_email.enqueue_many([{"to": "a@b.c"}, 5]), "send_email", "emails", "(body 1)"),
            (notify.append({"user": "x"}), "notify", "events", "valid integer"),
            (notify.append_many([{"user": 1}, {"user": "x"}]), "notify", "events", "(body 1)"),
            (notice.publish("many"), "notice", "notices", "valid integer"),
            (notice.publish_many([1, "many"]), "notice", "notices", "(body 1)"),
        ]
        for call, name, key, reason in refused:
            with pytest.raises(InvalidBody) as raised:
                await call
            assert isinstance(raised.value, ValueError)
            text = str(raised.value)
            assert f"handler {name!r} on {key!r} would refuse this body" in text, text
            assert reason in text and "\n" not in text, text
        # Nothing was sent, not even the valid bodies of a refused batch.
        assert await redis_client.exists("emails", "events") == 0
        assert await listener.get_message(timeout=0.2) is not None  # the subscribe reply
        assert await listener.get_message(timeout=0.2) is None

        # A dict for a model handler, and a field the stream handler converts, are accepted.
        await send_email.enqueue({"to": "a@b.c"})
        await send_email.enqueue_many([Email(to="d@e.f")])
        await notify.append({"user": 42})
        assert await notice.publish(3) == 1
        assert await redis_client.llen("emails") == 2
        assert await redis_client.xlen("events") == 1
    finally:
        await listener.aclose()
        await app.aclose()


async def test_lag_of_an_unknown_handler_is_a_clear_error(redis_url: str) -> None:
    app = App(redis_url)

    @app.stream("events", group="g")
    async def notify(event: dict[str, str]) -> None: ...

    with pytest.raises(ConfigurationError, match=r"no handler or key named 'nope'.*notify"):
        await app.lag("nope")
    await app.aclose()


async def test_run_with_nothing_to_run_is_a_configuration_error(redis_url: str) -> None:
    app = App(redis_url)
    with pytest.raises(ConfigurationError, match="nothing to run: the app has no handlers"):
        await app.run()
    await app.aclose()


async def test_a_refused_command_at_start_is_one_error_naming_the_handler(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.set("events", "not a stream")
    app = App(redis_url)

    @app.stream("events", group="g")
    async def notify(event: dict[str, str]) -> None: ...

    with pytest.raises(ConfigurationError) as raised:
        await app.start()
    text = str(raised.value)
    assert text.startswith("handler 'notify' (stream 'events', group 'g') cannot start: ")
    assert "WRONGTYPE" in text and "the key 'events' is not a stream" in text
    assert isinstance(raised.value.__cause__, redis.exceptions.ResponseError)
    await app.aclose()
