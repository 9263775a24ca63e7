"""``redis+sentinel://``: a real master, replica and sentinel; when the master is killed, the app
follows Sentinel to the promoted replica with every model."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _servers import RedisServer, call, free_port

from aioredq import App


class Sentinel:
    """One ``redis-server --sentinel`` child monitoring ``master`` as ``mymaster``."""

    def __init__(self, master: RedisServer) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="aioredq-sentinel-"))
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n"
        )
        binary = shutil.which("redis-server")
        assert binary
        self.log = (self.dir / "log").open("wb")
        self.proc = subprocess.Popen(
            [binary, str(conf), "--sentinel"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                reply = call(self.port, "SENTINEL", "REPLICAS", "mymaster")
                if reply:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sentinel did not see the replica")
            time.sleep(0.1)

    def master_port(self) -> int:
        reply = call(self.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        assert isinstance(reply, list)
        port = reply[1]
        return int(port.decode() if isinstance(port, bytes) else str(port))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sentinel_setup(
    redis_server_factory: object,
) -> Iterator[tuple[RedisServer, RedisServer, Sentinel]]:
    master: RedisServer = redis_server_factory()  # type: ignore[operator]
    replica: RedisServer = redis_server_factory(  # type: ignore[operator]
        extra_args=["--replicaof", "127.0.0.1", str(master.port)]
    )
    deadline = time.monotonic() + 10
    while replica.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica did not sync"
        time.sleep(0.05)
    sentinel = Sentinel(master)
    yield master, replica, sentinel
    sentinel.close()


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_app_follows_a_sentinel_failover(
    sentinel_setup: tuple[RedisServer, RedisServer, Sentinel],
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
    sentinel_setup: tuple[RedisServer, RedisServer, Sentinel],
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
