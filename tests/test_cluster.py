"""Every model on a real local Redis Cluster: keys spread over the three masters, a SIGKILLed
worker, ``--workers`` processes, and a manual failover mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from _servers import LocalCluster, RedisServer, call
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from aioredq import App, Backoff, Message, Reject, Retry
from aioredq._inspect import figures
from aioredq._transports import keys

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent
FAST = Backoff(base=0.05, factor=2.0, cap=0.2, jitter=False)
SCALE_QUEUES = ("scale-a", "scale-b")
SCALE_STREAMS = ("scale-s1", "scale-s2")


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def masters(cluster: LocalCluster, names: Iterable[str]) -> set[int]:
    """The ports of the masters serving ``names``."""
    return {cluster.master_for_key(name).port for name in names}


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """A plain cluster client (a foreign program) on the session's cluster, emptied."""
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    await client.initialize()
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    await client.aclose()


async def all_keys(client: RedisCluster) -> list[str]:
    found = await client.keys(target_nodes=RedisCluster.PRIMARIES)
    return [k.decode() for k in found]


def test_every_key_of_a_name_shares_the_name_slot() -> None:
    names = ["jobs", "a:b", "{tenant}jobs", "x{y}z", "{jobs", "jobs{", "{{jobs}"]
    for name in names:
        expected = key_slot(name.encode())
        aux = [
            keys.processing(name, "host:1:abc"),
            keys.delayed(name),
            keys.dead(name),
            keys.consumers(name),
            keys.consumers(name, "group"),
            keys.recover_lock(name),
            keys.recover_lock(name, "group"),
        ]
        assert {key_slot(k.encode()) for k in aux} == {expected}, name


QUEUES = ["jobs-a", "jobs-b", "jobs-d", "{tenant}jobs"]
STREAMS = ["events-a", "events-b", "events-c"]
SHARDS = ["orders-1", "orders-2", "orders-3"]


async def test_every_model_end_to_end_on_a_cluster(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    # The names really are spread: every model uses all three masters.
    for names in (QUEUES, STREAMS, SHARDS):
        assert len(masters(redis_cluster, names)) == 3, names
    seed = redis_cluster.nodes[0].port
    news = next(c for c in ("news", "news-1", "news-2") if masters(redis_cluster, [c]) != {seed})

    # A consumer of another program read an entry of each stream and died: claimed after the lease.
    for stream in STREAMS:
        await cluster_client.xgroup_create(stream, "g", "0", mkstream=True)
        await cluster_client.xadd(stream, {"n": "ghost"})
        await cluster_client.xreadgroup("g", "ghost", {stream: ">"})

    app = App(redis_cluster.url, shutdown_timeout=5.0)
    seen: dict[str, list[Any]] = {}

    def note(key: str, value: Any) -> None:
        seen.setdefault(key, []).append(value)

    for i, queue in enumerate(QUEUES):

        async def task(job: str, message: Message, queue: str = queue) -> None:
            if job == "retry-once" and message.attempt == 1:
                raise Retry(delay=0.1)
            if job == "fail-once" and message.attempt == 1:
                raise RuntimeError("first attempt fails")
            if job == "always-fails":
                raise RuntimeError("always")
            if job == "poison":
                raise Reject("poison")
            if job == "later":
                assert message.enqueued_at is not None
                waited = time.time() - message.enqueued_at.timestamp()
                note(f"{queue}:waited", waited)
            note(queue, (job, message.attempt))

        task.__name__ = f"task_{i}"
        app.add_task(task, queue, max_attempts=2, backoff=FAST, lease=2.0)

    for i, stream in enumerate(STREAMS):

        async def consume(event: dict[str, str], message: Message, stream: str = stream) -> None:
            if event.get("poison"):
                raise Reject("poison entry")
            if event.get("fail") == "once" and message.attempt == 1:
                raise RuntimeError("first delivery fails")
            note(stream, (event["n"], message.attempt))

        consume.__name__ = f"stream_{i}"
        app.add_stream(
            consume, stream, group="g", start="earliest", maxlen=1000, lease=1.0, backoff=FAST
        )

    @app.stream("events-a")
    async def tail(event: dict[str, str]) -> None:
        note("tail", event.get("n", "-"))

    @app.subscribe(news)
    async def notice(text: str) -> None:
        note("notice", text)

    @app.subscribe(pattern="mail-*")
    async def mail(text: str, message: Message) -> None:
        note("mail", message.channel)

    @app.subscribe(*SHARDS, sharded=True)
    async def orders(text: str, message: Message) -> None:
        note("orders", (message.channel, text))

    @app.subscribe(SHARDS[0], sharded=True)
    async def first_orders(text: str) -> None:
        note("first_orders", text)

    async with app:
        for queue in QUEUES:
            await app.enqueue_many(queue, ["one", "two"])
            for job in ("retry-once", "fail-once", "always-fails", "poison"):
                await app.enqueue(queue, job)
            await app.enqueue(queue, "later", delay=0.3)
            await cluster_client.lpush(queue, "foreign")
        for stream in STREAMS:
            await app.append_many(stream, [{"n": "1"}, {"n": "2"}])
            await app.append(stream, {"poison": "yes"})
            await app.append(stream, {"n": "3", "fail": "once"})
        await app.publish(news, "hello")
        await app.publish("mail-x", "hi")
        for shard in SHARDS:
            # SPUBLISH counts every subscriber of a shard channel, wherever it is connected
            assert await app.publish_many(shard, ["a", "b"], sharded=True) == 2
        # the bound shortcut publishes sharded; one connection subscribes for both handlers
        assert await first_orders.publish("c") == 1

        # (body, first attempt it can be handled at); at-least-once allows a late duplicate
        expected_jobs = {"one": 1, "two": 1, "retry-once": 2, "fail-once": 2, "later": 1}
        expected_jobs["foreign"] = 1
        expected_entries = {"1": 1, "2": 1, "3": 2, "ghost": 2}
        expected_orders = {(s, t) for s in SHARDS for t in "ab"} | {(SHARDS[0], "c")}

        def handled(key: str, expected: dict[str, int]) -> bool:
            firsts: dict[str, int] = {}
            for body, attempt in seen.get(key, []):
                firsts[body] = min(attempt, firsts.get(body, attempt))
            return firsts == expected

        async def everything_seen() -> bool:
            return (
                all(handled(q, expected_jobs) for q in QUEUES)
                and all(handled(s, expected_entries) for s in STREAMS)
                and sorted(seen.get("tail", [])) == ["-", "1", "2", "3"]
                and seen.get("notice") == ["hello"]
                and seen.get("mail") == ["mail-x"]
                and set(seen.get("orders", [])) == expected_orders
                and sorted(seen.get("first_orders", [])) == ["a", "b", "c"]
            )

        await wait_until(everything_seen, "every message of every model")

        async def dead_lettered() -> bool:
            lists = [await cluster_client.llen(keys.dead(q)) for q in QUEUES]
            streams = [await cluster_client.xlen(keys.dead(s)) for s in STREAMS]
            return set(lists) == {2} and set(streams) == {1}

        await wait_until(dead_lettered, "the dead letters")
        for queue in QUEUES:
            assert all(w >= 0.25 for w in seen[f"{queue}:waited"])
            letters = [json.loads(x) for x in await cluster_client.lrange(keys.dead(queue), 0, -1)]
            assert sorted((x["error"], x["attempts"]) for x in letters) == [
                ("Reject: poison", 1),
                ("RuntimeError: always", 2),
            ]

        # What `inspect` shows: subscribers counted over every node of the cluster.
        rows = {row["name"]: row for row in await figures(app)}
        assert rows["orders"]["subscribers"] == len(SHARDS)
        assert rows["notice"]["subscribers"] == 1
        for i in range(len(QUEUES)):
            assert rows[f"task_{i}"]["length"] == 0 and rows[f"task_{i}"]["dead"] == 2
        for i in range(len(STREAMS)):
            assert rows[f"stream_{i}"]["lag"] == 0 and rows[f"stream_{i}"]["dead"] == 1

    for stream in STREAMS:
        assert (await cluster_client.xpending(stream, "g"))["pending"] == 0
    # Nothing left in flight, and every key the app made lives in its queue's or stream's slot.
    left = await all_keys(cluster_client)
    assert not [k for k in left if ":processing:" in k]
    for key in left:
        names = QUEUES + STREAMS
        owner = next((n for n in names if key == n or key.startswith(keys.aux(n, ""))), "")
        assert owner, key
        assert key_slot(key.encode()) == key_slot(owner.encode()), key


def _start(url: str, *args: str, lease: float = 2.0, sleep: float = 0.0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AIOREDQ_URL": url, "SCALE_LEASE": str(lease), "SCALE_SLEEP": str(sleep)}
    return subprocess.Popen(
        [sys.executable, "-m", "aioredq", "tests.apps.scale_app:app", "--log-level=WARNING", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"pid {proc.pid} not stopped 30 s after {signum!r}") from None
    return proc.returncode, err.decode(errors="replace")


async def _produce_scale_work(url: str, total: int) -> None:
    producer = App(url)
    try:
        for queue in SCALE_QUEUES:
            await producer.enqueue_many(queue, [str(i) for i in range(total)])
        for stream in SCALE_STREAMS:
            await producer.append_many(stream, [{"n": str(i)} for i in range(total)])
    finally:
        await producer.aclose()


async def _all_done(client: RedisCluster, total: int) -> bool:
    for name in SCALE_QUEUES + SCALE_STREAMS:
        done = {int(x) for x in await client.lrange(keys.aux(name, "done"), 0, -1)}
        if done != set(range(total)):
            return False
    return True


async def _in_flight(client: RedisCluster, pid: int | None = None) -> int:
    """Messages held by consumers (those of the process ``pid`` only, if given)."""
    held = 0
    for queue in SCALE_QUEUES:
        for name in await client.zrange(keys.consumers(queue), 0, -1):
            if pid is None or f":{pid}:" in name.decode():
                held += int(await client.llen(keys.processing(queue, name.decode())))
    for stream in SCALE_STREAMS:
        for row in await client.xinfo_consumers(stream, "workers"):
            if pid is None or f":{pid}:" in row["name"].decode():
                held += int(row["pending"])
    return held


async def test_sigkill_of_a_worker_on_a_cluster_loses_nothing(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    assert len(masters(redis_cluster, SCALE_QUEUES + SCALE_STREAMS)) == 3
    # Several times what two workers hold at once (16 + 2 x 100 per handler): the one killed
    # is still holding work when it dies, whichever started first.
    total = 3000
    await _produce_scale_work(redis_cluster.url, total)
    workers = [_start(redis_cluster.url, lease=1.5, sleep=0.01) for _ in range(2)]
    try:

        async def some_done_and_held() -> bool:
            done = int(await cluster_client.llen("{scale-a}:done")) > 50
            return done and await _in_flight(cluster_client, workers[0].pid) > 0

        await wait_until(some_done_and_held, "the workers to get going")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        # The killed worker held work: it must be taken over, not lost.
        assert await _in_flight(cluster_client, workers[0].pid) > 0
        await wait_until(lambda: _all_done(cluster_client, total), "every message", timeout=60)
    finally:
        codes = [_stop(worker) for worker in workers]
    assert codes[0][0] == -signal.SIGKILL
    assert codes[1][0] == 0, codes[1][1]
    for stream in SCALE_STREAMS:
        assert (await cluster_client.xpending(stream, "workers"))["pending"] == 0
    assert await _in_flight(cluster_client) == 0


async def test_workers_share_the_work_on_a_cluster_and_stop_on_one_sigterm(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    supervisor = _start(redis_cluster.url, "--workers", "2", sleep=0.005)
    try:

        async def both_ready() -> bool:
            try:
                queues = [await cluster_client.zcard(keys.consumers(q)) for q in SCALE_QUEUES]
                groups = [await cluster_client.xinfo_consumers(s, "workers") for s in SCALE_STREAMS]
            except ResponseError:  # the stream or group is not there yet
                return False
            return set(queues) == {2} and {len(g) for g in groups} == {2}

        await wait_until(both_ready, "2 worker processes to join every queue and group")
        total = 300
        await _produce_scale_work(redis_cluster.url, total)
        await wait_until(lambda: _all_done(cluster_client, total), "every message", timeout=60)
        pids: set[int] = set()
        for name in SCALE_QUEUES + SCALE_STREAMS:
            pids |= {int(p) for p in await cluster_client.smembers(keys.aux(name, "pids"))}
        assert len(pids) == 2 and supervisor.pid not in pids  # two worker processes took part
    finally:
        code, err = _stop(supervisor)
    assert code == 0, err
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # Both left cleanly: nothing held, no consumer left behind.
    assert await _in_flight(cluster_client) == 0
    for queue in SCALE_QUEUES:
        assert await cluster_client.zcard(keys.consumers(queue)) == 0
    for stream in SCALE_STREAMS:
        assert await cluster_client.xinfo_consumers(stream, "workers") == []


def _replica_of(cluster: LocalCluster, master: RedisServer) -> RedisServer:
    for node in cluster.nodes:
        info = node.info("replication")
        if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
            return node
    raise AssertionError(f"no replica of {master.port}")


def _manual_failover(cluster: LocalCluster, replica: RedisServer) -> None:
    """CLUSTER FAILOVER on ``replica`` (coordinated: the master waits for the replica to catch
    up, so nothing acknowledged is lost), then wait until every node agrees."""
    call(replica.port, "CLUSTER", "FAILOVER")
    deadline = time.monotonic() + 20
    while replica.info("replication").get("role") != "master":
        if time.monotonic() > deadline:
            raise AssertionError("the replica did not become master")
        time.sleep(0.05)
    cluster.wait_stable(20, replicas=1)


async def test_manual_failover_mid_run_loses_nothing_acknowledged(
    redis_cluster_factory: Any,
) -> None:
    cluster: LocalCluster = redis_cluster_factory(masters=3, replicas=1)
    queue, stream, shard = "{fo}jobs", "{fo}events", "{fo}orders"
    master = cluster.master_for_key(queue)
    assert masters(cluster, [stream, shard]) == {master.port}
    replica = _replica_of(cluster, master)
    app = App(cluster.url, shutdown_timeout=5.0)
    jobs: set[str] = set()
    entries: set[str] = set()
    received: list[str] = []

    @app.task(queue, lease=2.0, backoff=FAST)
    async def job(text: str) -> None:
        jobs.add(text)

    @app.stream(stream, group="g", lease=2.0, backoff=FAST, start="earliest")
    async def event(entry: dict[str, str]) -> None:
        entries.add(entry["n"])

    @app.subscribe(shard, sharded=True)
    async def order(text: str) -> None:
        received.append(text)

    acked_jobs: list[str] = []
    acked_entries: list[str] = []
    stop = asyncio.Event()

    async def produce() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            with contextlib.suppress(Exception):  # refused during the switch: not acknowledged
                await app.enqueue(queue, f"job-{i}")
                acked_jobs.append(f"job-{i}")
            with contextlib.suppress(Exception):
                await app.append(stream, {"n": str(i)})
                acked_entries.append(str(i))
            await asyncio.sleep(0.002)

    async with app:
        producer = asyncio.create_task(produce())
        try:

            def produced(n: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    return len(acked_jobs) >= n and len(acked_entries) >= n

                return check

            await wait_until(produced(100), "100 acknowledged of each")
            await asyncio.to_thread(_manual_failover, cluster, replica)
            assert cluster.master_for_key(queue) is replica
            await wait_until(produced(len(acked_jobs) + 100), "100 more after the failover")
        finally:
            stop.set()
            await producer

        async def all_handled() -> bool:
            return set(acked_jobs) <= jobs and set(acked_entries) <= entries

        await wait_until(all_handled, "every acknowledged message to be handled", timeout=60)

        # The sharded subscription moved to the new master of its slot.
        async def order_received() -> bool:
            with contextlib.suppress(Exception):
                await app.publish(shard, "after", sharded=True)
            return "after" in received

        await wait_until(order_received, "a shard message after the failover", timeout=20)


async def test_a_crashed_master_is_replaced_and_every_model_follows(
    redis_cluster_factory: Any,
) -> None:
    cluster: LocalCluster = redis_cluster_factory(masters=3, replicas=1)
    seed = cluster.nodes[0].port
    # A plain channel whose node is not the seed, a shard channel and a queue on that node.
    channel = next(
        c for c in ("news", "news-1", "news-2", "news-3") if masters(cluster, [c]) != {seed}
    )
    master = cluster.master_for_key(channel)
    shard = next(
        f"orders-{i}" for i in range(50) if masters(cluster, [f"orders-{i}"]) == {master.port}
    )
    queue = next(f"jobs-{i}" for i in range(50) if masters(cluster, [f"jobs-{i}"]) == {master.port})
    replica = _replica_of(cluster, master)
    app = App(cluster.url, shutdown_timeout=5.0)
    got: list[tuple[str, str]] = []
    jobs: set[str] = set()

    @app.subscribe(channel)
    async def plain(text: str) -> None:
        got.append(("plain", text))

    @app.subscribe(shard, sharded=True)
    async def sharded(text: str) -> None:
        got.append(("sharded", text))

    @app.task(queue, lease=2.0, backoff=FAST)
    async def job(text: str) -> None:
        jobs.add(text)

    async with app:
        await app.enqueue_many(queue, [f"job-{i}" for i in range(100)])

        async def first_handled() -> bool:
            return len(jobs) == 100

        await wait_until(first_handled, "the first jobs")
        offset = int(master.info("replication")["master_repl_offset"])

        async def replica_caught_up() -> bool:
            info = replica.info("replication")
            return int(info.get("slave_repl_offset", -1)) >= offset

        await wait_until(replica_caught_up, "the replica to catch up")
        master.kill()
        await asyncio.to_thread(cluster.wait_stable, 30)
        assert cluster.master_for_key(queue) is replica

        async def both_received() -> bool:
            with contextlib.suppress(Exception):
                await app.publish(channel, "after")
                await app.publish(shard, "after", sharded=True)
            return {kind for kind, text in got if text == "after"} == {"plain", "sharded"}

        await wait_until(both_received, "plain and shard messages after the failover")
        await app.enqueue_many(queue, [f"job-{i}" for i in range(100, 200)])

        async def all_handled() -> bool:
            return len(jobs) == 200

        await wait_until(all_handled, "the jobs enqueued after the failover")


async def test_ten_thousand_concurrent_producers_on_a_cluster(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    """A cluster node's pool refuses at once when full; the app's producing bound makes
    every call wait its turn instead, on keys spread over every master."""
    app = App(redis_cluster.url, max_connections=10)
    queues = [f"burst-{i}" for i in range(8)]
    assert len(masters(redis_cluster, queues)) == 3

    async def produce(i: int) -> object:
        if i % 3 == 0:
            return await app.enqueue(queues[i % 8], i)
        if i % 3 == 1:
            return await app.append(f"{{{queues[i % 8]}}}:events", {"n": i})
        return await app.publish("news", str(i))

    try:
        results = await asyncio.gather(*(produce(i) for i in range(10_000)))
    finally:
        await app.aclose()
    assert len(results) == 10_000
    lengths = [await cluster_client.llen(q) for q in queues]
    assert sum(lengths) == len(range(0, 10_000, 3))
