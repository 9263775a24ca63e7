"""Every model on a real local Redis Cluster: keys over several slots, a SIGKILLed worker, and
a manual failover mid-run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _servers import LocalCluster
from redis.asyncio.cluster import RedisCluster

from aioredq import App, Message, Reject, Retry

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent


def slot(client: RedisCluster, key: str) -> int:
    return int(client.keyslot(key))


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> Any:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    await client.initialize()
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    await client.aclose()


async def test_every_model_end_to_end_on_a_cluster(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    app = App(redis_cluster.url)
    seen: dict[str, list[Any]] = {}
    queues = ["jobs-a", "jobs-b", "{tenant}jobs"]
    streams = ["events-a", "events-b"]
    shards = ["orders-1", "orders-2", "orders-3"]
    assert len({slot(cluster_client, k) for k in queues}) == 3
    assert len({slot(cluster_client, k) for k in shards}) > 1

    def note(key: str, value: Any) -> None:
        seen.setdefault(key, []).append(value)

    for queue in queues:

        async def task(job: str, message: Message, queue: str = queue) -> None:
            if job == "retry-once" and message.attempt == 1:
                raise Retry(delay=0.1)
            if job == "poison":
                raise Reject("poison")
            note(queue, (job, message.attempt))

        task.__name__ = f"task_{len(seen)}_{abs(hash(queue))}"
        app.add_task(task, queue)
    for stream in streams:

        async def consume(event: dict[str, str], stream: str = stream) -> None:
            if event.get("poison"):
                raise Reject("poison entry")
            note(stream, event["n"])

        consume.__name__ = f"stream_{abs(hash(stream))}"
        app.add_stream(consume, stream, group="g", start="earliest", maxlen=1000)

    @app.subscribe("notice")
    async def notice(text: str) -> None:
        note("notice", text)

    @app.subscribe(pattern="mail-*")
    async def mail(text: str, message: Message) -> None:
        note("mail", message.channel)

    @app.subscribe(*shards, sharded=True)
    async def orders(text: str, message: Message) -> None:
        note("orders", message.channel)

    async with app:
        for queue in queues:
            await app.enqueue_many(queue, ["one", "two"])
            await app.enqueue(queue, "retry-once")
            await app.enqueue(queue, "later", delay=0.3)
            await app.enqueue(queue, "poison")
        for stream in streams:
            await app.append_many(stream, [{"n": "1"}, {"n": "2"}])
            await app.append(stream, {"poison": "yes"})
        await app.publish("notice", "hello")
        await app.publish("mail-x", "hi")
        for shard in shards:
            await app.publish(shard, "o", sharded=True)

        async def everything_seen() -> bool:
            return (
                all(len(seen.get(q, [])) == 4 for q in queues)
                and all(sorted(seen.get(s, [])) == ["1", "2"] for s in streams)
                and seen.get("notice") == ["hello"]
                and seen.get("mail") == ["mail-x"]
                and sorted(seen.get("orders", [])) == sorted(shards)
            )

        await wait_until(everything_seen)
        assert all(("retry-once", 2) in seen[q] for q in queues)
        for queue in queues:
            letters = await cluster_client.lrange(
                "{tenant}jobs:dead" if queue.startswith("{") else f"{{{queue}}}:dead", 0, -1
            )
            assert len(letters) == 1 and b"Reject: poison" in letters[0]
            assert await cluster_client.keys(f"*{queue.strip('{}')}*processing*") == []
        for stream in streams:
            assert (await cluster_client.xpending(stream, "g"))["pending"] == 0
            assert await cluster_client.xlen(f"{{{stream}}}:dead") == 1


def _start_worker(url: str, lease: float, sleep: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AIOREDQ_URL": url, "SCALE_LEASE": str(lease), "SCALE_SLEEP": str(sleep)}
    return subprocess.Popen(
        [sys.executable, "-m", "aioredq", "tests.apps.scale_app:app", "--log-level", "WARNING"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_sigkill_of_a_worker_on_a_cluster_loses_nothing(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    total = 600
    producer = App(redis_cluster.url)
    for queue in ("scale-a", "scale-b"):
        await producer.enqueue_many(queue, [str(i) for i in range(total)])
    for stream in ("scale-s1", "scale-s2"):
        await producer.append_many(stream, [{"n": str(i)} for i in range(total)])
    await producer.aclose()
    workers = [_start_worker(redis_cluster.url, lease=2.0, sleep=0.005) for _ in range(2)]
    try:

        async def some_done() -> bool:
            return int(await cluster_client.llen("{scale-a}:done")) > 50

        await wait_until(some_done)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()

        async def all_done() -> bool:
            for key in ("scale-a", "scale-b", "scale-s1", "scale-s2"):
                done = {int(x) for x in await cluster_client.lrange(f"{{{key}}}:done", 0, -1)}
                if done != set(range(total)):
                    return False
            return True

        await wait_until(all_done, timeout=60)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            _, err = worker.communicate(timeout=30)
            assert worker.returncode in (0, -signal.SIGKILL), err.decode()
    for stream in ("scale-s1", "scale-s2"):
        assert (await cluster_client.xpending(stream, "workers"))["pending"] == 0


async def test_manual_failover_mid_run_loses_nothing_acknowledged(
    redis_cluster_factory: Any,
) -> None:
    cluster: LocalCluster = redis_cluster_factory(masters=3, replicas=1)
    app = App(cluster.url)
    handled: set[str] = set()

    @app.task("failover-jobs", lease=2.0)
    async def job(text: str) -> None:
        handled.add(text)

    acknowledged: list[str] = []
    async with app:

        async def produce(start: int, count: int) -> None:
            for i in range(start, start + count):
                try:
                    await app.enqueue("failover-jobs", f"job-{i}")
                except Exception:  # refused during the switch: not acknowledged, not counted
                    await asyncio.sleep(0.05)
                    continue
                acknowledged.append(f"job-{i}")
                await asyncio.sleep(0.002)

        await produce(0, 200)
        master = cluster.master_for_key("failover-jobs")
        replica = next(n for n in cluster.nodes if n is not master and _replicates(n, master))
        failover = asyncio.create_task(asyncio.to_thread(_failover, replica))
        await produce(200, 400)
        await failover
        cluster.wait_stable()
        await produce(600, 100)

        async def all_handled() -> bool:
            return set(acknowledged) <= handled

        await wait_until(all_handled, timeout=60)
    assert len(acknowledged) >= 600


def _replicates(node: Any, master: Any) -> bool:
    info = node.info("replication")
    return info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port


def _failover(replica: Any) -> None:
    from _servers import call

    call(replica.port, "CLUSTER", "FAILOVER")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if replica.info("replication").get("role") == "master":
            return
        time.sleep(0.05)
    raise AssertionError("replica did not become master")
