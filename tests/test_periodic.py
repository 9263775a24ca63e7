"""Periodic jobs: one job per tick across worker processes, a SIGKILL and a Redis restart;
missed ticks fire once; bad schedules are refused when declared."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import redis.asyncio
from _servers import RedisServer

from aioredq import App, ConfigurationError
from aioredq._cron import Schedule

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.periodic_app:app"
# AIOREDQ_SOAK=1 runs the long form (a minute, as the contract says); the default is short.
SECONDS = 60.0 if os.environ.get("AIOREDQ_SOAK") else 4.0


class Procs:
    def __init__(self, url: str, logs: Path) -> None:
        self.url, self.logs, self.procs = url, logs, []  # type: ignore[var-annotated]

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.logs / f"w{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "aioredq", APP, "--url", self.url, "--log-level", "WARNING"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def durable(redis_server_factory) -> RedisServer:  # type: ignore[no-untyped-def]
    return redis_server_factory(appendonly=True)  # type: ignore[no-any-return]


@pytest.fixture
def procs(durable: RedisServer, tmp_path: Path) -> Iterator[Procs]:
    group = Procs(durable.url, tmp_path)
    try:
        yield group
    finally:
        group.close()


def ticks(url: str) -> list[tuple[float, float]]:
    """(tick time, ms late) of every run so far."""
    with redis.Redis.from_url(url) as r:
        rows = [raw.decode().split("|") for raw in r.lrange("ticks", 0, -1)]
    return [(datetime.fromisoformat(at).timestamp(), float(late)) for at, _, late in rows]


def wait_ticks(url: str, n: int) -> None:
    deadline = time.monotonic() + 60
    while len(ticks(url)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} ticks: {ticks(url)}"
        time.sleep(0.05)


@pytest.mark.slow
def test_three_workers_one_job_per_tick_through_sigkill_and_redis_restart(
    procs: Procs, durable: RedisServer
) -> None:
    url = durable.url
    workers = [procs.start() for _ in range(3)]
    wait_ticks(url, 2)
    workers[0].send_signal(signal.SIGKILL)  # one dies mid-run; another takes its place
    workers[0].wait()
    procs.start()
    wait_ticks(url, 2 + int(SECONDS / 2))
    durable.restart()  # with its append-only file: the last fired tick survives
    wait_ticks(url, 2 + int(SECONDS))
    fired = [at for at, _ in ticks(url)]
    doubled = [at for at, n in Counter(fired).items() if n > 1]
    assert not doubled, doubled

    # Every worker stops; ticks pass; one worker starts: the missed ones fire once, not each.
    for proc in procs.procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.procs:
        assert proc.wait(30) in (0, -signal.SIGKILL)
    stopped = time.time()
    before = len(ticks(url))
    time.sleep(3.5)  # nothing runs for more than three ticks
    procs.start()
    wait_ticks(url, before + 3)
    fired = sorted(at for at, _ in ticks(url))
    assert not [at for at, n in Counter(fired).items() if n > 1]
    after = [at for at in fired if at > stopped]
    last_before = max(at for at in fired if at <= stopped)
    assert after[0] - last_before >= 2  # the ticks missed meanwhile did not each fire
    assert all(b - a == pytest.approx(1.0) for a, b in itertools.pairwise(after[1:]))
    late = sorted(ms for _, ms in ticks(url))
    print(
        f"ticks {len(late)}: ms late p50 {late[len(late) // 2]:.1f} p99 "
        f"{late[min(len(late) - 1, int(len(late) * 0.99))]:.1f} max {late[-1]:.1f}"
    )


async def test_missed_ticks_fire_once_and_a_new_schedule_starts_with_the_next_tick(
    redis_url: str,
) -> None:
    r = redis.asyncio.Redis.from_url(redis_url)
    runs: list[datetime] = []

    app = App(redis_url)

    @app.task("per", every=1)
    async def per(at: datetime) -> None:
        runs.append(at)

    started = time.time()
    await r.hset("{per}:schedule:per", "last", int((started - 10) * 1000) // 1000 * 1000)
    async with app:
        deadline = time.monotonic() + 20
        while len(runs) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    missed = [at for at in runs if at.timestamp() <= started]
    assert len(missed) == 1  # the latest missed tick, once
    assert missed[0].timestamp() == pytest.approx(int(started), abs=1.01)
    assert all(at.tzinfo is not None for at in runs)

    # Never fired before: nothing from the past.
    await r.delete("{per}:schedule:per")
    runs.clear()
    started = time.time()
    app2 = App(redis_url)
    app2.add_task(per.func, "per", every=1)
    async with app2:
        deadline = time.monotonic() + 20
        while not runs:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    assert all(at.timestamp() > started for at in runs)
    await r.aclose()


def test_cron_ticks_follow_the_time_zone_and_seconds_come_first() -> None:
    paris = Schedule("0 9 * * *", "Europe/Paris", None)
    t = datetime(2026, 7, 1, 6, 0, tzinfo=UTC).timestamp()
    assert datetime.fromtimestamp(paris.next_after(t), UTC).hour == 7  # 09:00 CEST
    every5s = Schedule("*/5 * * * * *", "UTC", None)
    t = datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC).timestamp()
    assert every5s.next_after(t) - t == pytest.approx(3)
    assert every5s.latest_at_or_before(t) - t == pytest.approx(-2)
    assert Schedule(None, "UTC", 2.5).next_after(5.0) == 7.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "not valid"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "time zone"),
        ({"cron": "* * * * *", "every": 1}, "not both"),
        ({"every": 0}, "every"),
    ],
)
def test_bad_schedules_are_refused_when_declared(options: dict, message: str) -> None:  # type: ignore[type-arg]
    app = App("memory://")
    with pytest.raises(ConfigurationError, match=message):

        @app.task("bad", **options)
        async def bad(at: datetime) -> None: ...


async def test_inspect_and_metrics_show_the_next_tick_and_the_last_fired(redis_url: str) -> None:
    from aioredq._inspect import figures, render_table
    from aioredq._metrics import _redis_families

    app = App(redis_url)

    @app.task("shown", cron="0 * * * *", tz="Europe/Paris")
    async def hourly(at: datetime) -> None: ...

    try:
        (row,) = await figures(app)
        nxt = datetime.fromisoformat(row["schedule"]["next"])
        assert row["schedule"]["last_fired"] is None
        assert (nxt.minute, nxt.second) == (0, 0) and 0 < nxt.timestamp() - time.time() <= 3600
        assert "next tick" in render_table([row]) and "last fired never" in render_table([row])
        await app.connection.command.hset("{shown}:schedule:hourly", "last", 1767222000000)
        (row,) = await figures(app)
        assert datetime.fromisoformat(row["schedule"]["last_fired"]).timestamp() == 1767222000
        families = {f.name: f for f in _redis_families([row])}
        samples = {
            s.labels["tick"]: s.value for s in families["aioredq_schedule_tick_seconds"].samples
        }
        assert samples == {"next": nxt.timestamp(), "last_fired": 1767222000}
    finally:
        await app.aclose()
