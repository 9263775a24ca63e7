"""Rate limits enforced in Redis across every consumer (a sliding-window log of starts), and
RateLimited(delay): the message back uncounted, the queue or group held off for every worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio
from _waiting import until

from aioredq import App, ConfigurationError, Message, Rate, RateLimited

ROOT = Path(__file__).resolve().parent.parent
# AIOREDQ_SOAK=1 runs the long form (20 s); the default is short.
SECONDS = 20.0 if os.environ.get("AIOREDQ_SOAK") else 3.0


def worst_window(starts: list[float], per: float = 1.0) -> int:
    """The most starts in any window of ``per`` seconds."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while t - starts[lo] >= per:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def assert_within_rate(
    label: str, rate: int, starts: list[float], grants: dict[bytes, float]
) -> None:
    """Over the measured span from the first start: every start granted in Redis, never more
    than ``rate`` grants in any 1 s window, and starts within 10 % below the rate."""
    first = min(starts)
    measured = [t for t in starts if t < first + SECONDS]
    per_second = len(measured) / SECONDS
    granted = [ms / 1000 for ms in grants.values()]
    print(
        f"{label}: {per_second:.1f} starts/s, worst 1 s window of grants "
        f"{worst_window(granted)}, of handler starts {worst_window(starts)}"
    )
    assert len(granted) >= len(measured)  # every start was granted in Redis
    assert worst_window(granted) <= rate  # never above it, over any 1 s window
    assert per_second >= rate * 0.9  # within 10 % below


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["task", "stream"])
async def test_three_consumers_share_one_rate(kind: str, redis_url: str) -> None:
    rate = 50
    starts: list[float] = []
    apps = [App(redis_url) for _ in range(3)]
    for app in apps:
        if kind == "task":

            @app.task("rated", rate=f"{rate}/s", concurrency=8)
            async def job(body: int) -> None:
                starts.append(time.time())

        else:

            @app.stream("rated-s", group="g", rate=Rate(rate, per=1.0), start="earliest")
            async def entry(body: dict) -> None:  # type: ignore[type-arg]
                starts.append(time.time())

    total = int(rate * SECONDS) + 200  # a backlog that outlasts the run
    if kind == "task":
        await apps[0].enqueue_many("rated", list(range(total)))
    else:
        await apps[0].append_many("rated-s", [{"n": str(i)} for i in range(total)])
    # The limit is enforced where the starts are granted: in Redis, on the server's clock, in
    # the window log (kept for a little over the period, so reading it every 0.2 s sees every
    # grant). The handlers' own start times follow, late by however long the worker's event
    # loop took to run them, which on a busy machine can bunch them up.
    log = "{rated}:rate" if kind == "task" else "{rated-s}:rate:g"
    probe = redis.asyncio.Redis.from_url(redis_url)
    grants: dict[bytes, float] = {}
    for app in apps:
        await app.start()
    try:
        deadline = time.monotonic() + SECONDS + 0.5  # the measured span
        while time.monotonic() < deadline:
            grants.update(await probe.zrange(log, 0, -1, withscores=True))
            await asyncio.sleep(0.2)
    finally:
        for app in apps:
            await app.aclose()
        await probe.aclose()
    assert_within_rate(kind, rate, starts, grants)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["task", "stream"])
async def test_three_worker_processes_share_one_rate(
    kind: str, redis_url: str, tmp_path: Path
) -> None:
    """The contract's form: three ``python -m aioredq`` processes, one rate between them."""
    rate = 50
    name = "rated" if kind == "task" else "rated-s"
    producer = App(redis_url)
    probe = redis.asyncio.Redis.from_url(redis_url)
    total = int(rate * SECONDS) + 200  # a backlog that outlasts the run
    if kind == "task":
        await producer.enqueue_many(name, list(range(total)))
    else:
        await producer.append_many(name, [{"n": str(i)} for i in range(total)])
    await producer.aclose()
    log = "{rated}:rate" if kind == "task" else "{rated-s}:rate:g"
    env = {**os.environ, "RATE_PER_S": str(rate)}
    command = [sys.executable, "-m", "aioredq", "tests.apps.rate_app:app", "--url", redis_url]
    workers: list[asyncio.subprocess.Process] = []
    grants: dict[bytes, float] = {}
    try:
        for i in range(3):
            with (tmp_path / f"w{i}.log").open("wb") as out:
                workers.append(
                    await asyncio.create_subprocess_exec(
                        *command,
                        *("--only", name, "--log-level", "WARNING"),
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        # The span is measured from the first start, once the workers are up.
        deadline = time.monotonic() + 60
        while not await probe.llen("starts"):
            assert time.monotonic() < deadline, "no worker started a handler"
            assert all(w.returncode is None for w in workers), "a worker exited"
            grants.update(await probe.zrange(log, 0, -1, withscores=True))
            await asyncio.sleep(0.2)
        deadline = time.monotonic() + SECONDS + 0.5
        while time.monotonic() < deadline:
            grants.update(await probe.zrange(log, 0, -1, withscores=True))
            await asyncio.sleep(0.2)
        assert all(w.returncode is None for w in workers), "a worker exited"
    finally:
        for w in workers:
            if w.returncode is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                await asyncio.wait_for(w.wait(), 30)
            except TimeoutError:
                w.kill()
                await w.wait()
        rows = [raw.split() for raw in await probe.lrange("starts", 0, -1)]
        await probe.aclose()
    starts = [float(at) for at, _ in rows]
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
    assert "Traceback" not in logs, logs
    assert len({pid for _, pid in rows}) == 3  # every process started handlers
    assert_within_rate(f"{kind}, 3 processes", rate, starts, grants)


@pytest.mark.parametrize("url_kind", ["redis", "memory"])
async def test_rate_limited_puts_the_job_back_uncounted_and_holds_the_queue_off(
    url_kind: str, redis_url: str
) -> None:
    app = App(redis_url if url_kind == "redis" else "memory://")
    runs: list[tuple[str, int, float]] = []

    @app.task("limited", concurrency=1)
    async def job(body: str, message: Message) -> None:
        runs.append((body, message.attempt, time.monotonic()))
        if body == "a" and len(runs) == 1:
            raise RateLimited(1.0)

    await app.enqueue("limited", "a")
    async with app:
        await until(lambda: len(runs) == 2, "the job run again")
    (_, first_attempt, t0), (body, attempt, t1) = runs
    assert body == "a" and first_attempt == attempt == 1  # the attempt was not counted
    assert t1 - t0 >= 0.9  # the queue was held off for the delay


async def test_rate_limited_holds_a_stream_group_off(redis_url: str) -> None:
    app = App(redis_url)
    runs: list[tuple[str, int, float]] = []

    @app.stream("limited-s", group="g", start="earliest", concurrency=1)
    async def entry(body: dict, message: Message) -> None:  # type: ignore[type-arg]
        runs.append((body["n"], message.attempt, time.monotonic()))
        if len(runs) == 1:
            raise RateLimited(1.0)

    await app.append("limited-s", {"n": "1"})
    async with app:
        await until(lambda: len(runs) == 2, "the entry run again")
    (_, a0, t0), (n, a1, t1) = runs
    assert n == "1" and a0 == a1 == 1
    assert t1 - t0 >= 0.9


def test_rates_are_parsed_and_bad_ones_refused() -> None:
    app = App("memory://")

    @app.task("r1", rate="10/m")
    async def r1(body: str) -> None: ...

    assert r1.spec.rate == Rate(10, per=60.0)  # type: ignore[union-attr]
    for bad in ("10", "10/d", "0/s", -1):
        with pytest.raises(ConfigurationError, match=r"rate|Rate"):

            @app.task("r2", rate=bad)  # type: ignore[arg-type]
            async def r2(body: str) -> None: ...
