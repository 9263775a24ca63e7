"""aioredq.testing: the helpers users test their own handlers with, on memory://."""

from __future__ import annotations

import pytest
from _waiting import until
from pydantic import BaseModel

from aioredq import App, Reject
from aioredq.testing import running


class EmailJob(BaseModel):
    to: str


def make_app() -> tuple[App, list[str]]:
    app = App("redis://unused.invalid:6379/0")
    sent: list[str] = []

    @app.task("jobs")
    async def send_email(job: EmailJob) -> None:
        if job.to.endswith(".invalid"):
            raise Reject("undeliverable address")
        sent.append(job.to)

    @app.stream("events", group="g")
    async def on_event(event: dict[str, str]) -> None:
        sent.append(event["what"])

    @app.subscribe("notice")
    async def notice(text: str) -> None:
        sent.append(text)

    return app, sent


async def test_running_on_memory_waits_until_every_handler_is_idle() -> None:
    app, sent = make_app()
    async with running(app) as harness:
        await app.enqueue("jobs", EmailJob(to="a@example.com"))
        await app.enqueue("jobs", EmailJob(to="b@host.invalid"))
        await app.append("events", {"what": "signup"})
        await app.publish("notice", "hello")
        await harness.wait_idle(timeout=10)
        assert sorted(sent) == ["a@example.com", "hello", "signup"]
        assert harness.stats["send_email"].succeeded == 1
        assert harness.stats["send_email"].dead_lettered == 1
        letters = await harness.dead_letters("jobs")
        assert [(d["error"], d["attempts"]) for d in letters] == [
            ("Reject: undeliverable address", 1)
        ]
        assert await harness.dead_letters("on_event") == []
        with pytest.raises(ValueError, match="pub/sub"):
            await harness.dead_letters("notice")


async def test_wait_idle_times_out_naming_what_is_busy() -> None:
    app = App(shutdown_timeout=0.2)

    @app.task("slow")
    async def slow(job: str) -> None:
        import anyio

        await anyio.sleep(5)

    async with running(app) as harness:
        await app.enqueue("slow", "x")
        with pytest.raises(TimeoutError, match="not idle"):
            await harness.wait_idle(timeout=0.3)
    # the handler was cancelled at the shutdown timeout and its item handed back
    async with running(app, url=None) as harness:
        # The consumer takes it again at its first fetch, which may come after start returns.
        await until(lambda: harness.stats["slow"].received == 2, "the item to run again")
        assert await app.connection.command.llen("slow") == 0
        assert harness.stats["slow"].received == 2
