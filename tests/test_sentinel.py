"""``redis+sentinel://``: a real master, replica and sentinel; when the master is killed, the app
follows Sentinel to the promoted replica with every model."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

import pytest
from _servers import RedisServer, SentinelServer, call

from aioredq import App


@pytest.fixture
def sentinel_setup(
    redis_server_factory: object,
) -> Iterator[tuple[RedisServer, RedisServer, SentinelServer]]:
    master: RedisServer = redis_server_factory()  # type: ignore[operator]
    replica: RedisServer = redis_server_factory(  # type: ignore[operator]
        extra_args=["--replicaof", "127.0.0.1", str(master.port)]
    )
    deadline = time.monotonic() + 10
    while replica.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica did not sync"
        time.sleep(0.05)
    sentinel = SentinelServer(master.port)
    try:
        sentinel.wait_until(
            lambda: bool(sentinel.call("SENTINEL", "REPLICAS", "mymaster")), "replica in view"
        )
        yield master, replica, sentinel
    finally:
        sentinel.close()


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_app_follows_a_sentinel_failover(
    sentinel_setup: tuple[RedisServer, RedisServer, SentinelServer],
) -> None:
    master, replica, sentinel = sentinel_setup
    app = App(f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster", shutdown_timeout=5.0)
    jobs: set[str] = set()
    entries: set[str] = set()
    notices: list[str] = []

    @app.task("jobs", lease=2.0)
    async def job(text: str) -> None:
        jobs.add(text)

    @app.stream("events", group="g", lease=2.0, start="earliest")
    async def event(entry: dict[str, str]) -> None:
        entries.add(entry["n"])

    @app.subscribe("notice")
    async def notice(text: str) -> None:
        notices.append(text)

    acked_jobs: list[str] = []
    acked_entries: list[str] = []

    async def produce(start: int, count: int) -> None:
        for i in range(start, start + count):
            with contextlib.suppress(Exception):  # refused while the master changes
                await app.enqueue("jobs", f"job-{i}")
                acked_jobs.append(f"job-{i}")
            with contextlib.suppress(Exception):
                await app.append("events", {"n": str(i)})
                acked_entries.append(str(i))
            await asyncio.sleep(0.002)

    def handled() -> bool:
        return set(acked_jobs) <= jobs and set(acked_entries) <= entries

    async with app:
        await produce(0, 100)
        await wait_until(handled, "the first 100 of each to be handled")
        # Replication is asynchronous: what the replica has not received when the master dies
        # is lost (a Redis limitation, not the app's), so let it catch up first.
        offset = int(master.info("replication")["master_repl_offset"])
        await wait_until(
            lambda: int(replica.info("replication").get("slave_repl_offset", -1)) >= offset,
            "the replica to catch up",
        )
        master.kill()  # SIGKILL: the master crashes; Sentinel promotes the replica
        await wait_until(lambda: sentinel.master_port() == replica.port, "the failover", 20)
        await produce(100, 200)
        assert len(acked_jobs) >= 250 and len(acked_entries) >= 250
        await wait_until(handled, "every acknowledged message to be handled")
        # Everything acknowledged is on the new master, and the app took its work from there.
        assert call(replica.port, "LLEN", "jobs") == 0
        assert call(replica.port, "XLEN", "events") >= len(set(acked_entries))

        def published() -> bool:
            with contextlib.suppress(Exception):
                call(replica.port, "PUBLISH", "notice", "after")
            return "after" in notices

        # The subscriber reconnected to the new master (a publish there reaches it).
        await wait_until(published, "a notice published on the new master")


async def test_ten_thousand_concurrent_producers_through_sentinel(
    sentinel_setup: tuple[RedisServer, RedisServer, SentinelServer],
) -> None:
    """Sentinel builds its own pool; the app's producing bound still makes calls wait."""
    _, _, sentinel = sentinel_setup
    app = App(f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster", max_connections=10)
    try:
        ids = await asyncio.gather(*(app.enqueue("jobs", i) for i in range(10_000)))
        assert len(set(ids)) == 10_000
        assert await app.connection.command.llen("jobs") == 10_000
    finally:
        await app.aclose()
