"""``redis+sentinel://``: a real master, replica and sentinel; the app follows a failover."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
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


async def test_app_follows_a_sentinel_failover(
    sentinel_setup: tuple[RedisServer, RedisServer, Sentinel],
) -> None:
    master, replica, sentinel = sentinel_setup
    app = App(f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster")
    handled: set[str] = set()

    @app.task("jobs", lease=2.0)
    async def job(text: str) -> None:
        handled.add(text)

    acknowledged: list[str] = []

    async def produce(start: int, count: int) -> None:
        for i in range(start, start + count):
            try:
                await app.enqueue("jobs", f"job-{i}")
            except Exception:  # refused while the master changes: not acknowledged
                await asyncio.sleep(0.05)
                continue
            acknowledged.append(f"job-{i}")
            await asyncio.sleep(0.002)

    async with app:
        await produce(0, 100)
        # WAIT makes sure the replica has everything acknowledged so far
        call(master.port, "WAIT", "1", "2000")
        call(sentinel.port, "SENTINEL", "FAILOVER", "mymaster")
        deadline = time.monotonic() + 20
        while sentinel.master_port() != replica.port:
            assert time.monotonic() < deadline, "sentinel did not fail over"
            await asyncio.sleep(0.1)
        await produce(100, 200)
        deadline = time.monotonic() + 30
        while not set(acknowledged) <= handled:
            assert time.monotonic() < deadline, f"{len(set(acknowledged) - handled)} not handled"
            await asyncio.sleep(0.05)
    assert len(acknowledged) >= 250
