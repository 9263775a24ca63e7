"""Stream consumers killed with SIGKILL: every entry is still handled and acked, by the others.

Two worker processes (``tests/apps/stream_crash.py``) share one consumer group; one is killed
mid-run. What the killed worker held is claimed by the survivor once its lease has run out, so
the test also measures that recovery time (printed; run with ``-s`` to see it).
Set AIOREDQ_SOAK=1 for the larger soak form of the slow test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio

from aioredq import App

ROOT = Path(__file__).resolve().parents[1]
STREAM = "crash"
GROUP = "workers"
SEEN = "{crash}:seen"
SOAK = bool(os.environ.get("AIOREDQ_SOAK"))


@dataclass
class Worker:
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


async def start_worker(url: str, log: Path, lease: float, sleep: float) -> Worker:
    env = {
        **os.environ,
        "AIOREDQ_URL": url,
        "CRASH_LEASE": str(lease),
        "CRASH_SLEEP": str(sleep),
        "PYTHONPATH": str(ROOT),
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.apps.stream_crash",
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    return Worker(proc, log)


async def poll(
    predicate: Callable[[], Awaitable[bool]], timeout: float, what: str, workers: list[Worker]
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- worker {w.pid}:\n{w.output()}" for w in workers)
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        await asyncio.sleep(0.02)


async def records(client: redis.asyncio.Redis) -> list[tuple[str, int, float]]:
    out = []
    for raw in await client.lrange(SEEN, 0, -1):
        entry_id, pid, at = raw.decode().split()
        out.append((entry_id, int(pid), float(at)))
    return out


async def consumers(client: redis.asyncio.Redis) -> dict[str, int]:
    """Consumer name -> pending count."""
    return {
        c["name"].decode(): int(c["pending"]) for c in await client.xinfo_consumers(STREAM, GROUP)
    }


async def crash_run(
    url: str,
    client: redis.asyncio.Redis,
    tmp_path: Path,
    *,
    entries: int,
    workers: int,
    kills: int,
    lease: float,
    sleep: float,
) -> None:
    running = [
        await start_worker(url, tmp_path / f"worker{n}.log", lease, sleep) for n in range(workers)
    ]
    everyone = list(running)
    try:
        await client.delete(SEEN)

        async def joined() -> bool:
            return bool(await client.exists(STREAM)) and len(await consumers(client)) == workers

        await poll(joined, 30, f"{workers} workers in the group", everyone)
        producer = App(url)
        ids: list[str] = []
        for start in range(0, entries, 500):
            batch = [{"n": str(n)} for n in range(start, min(start + 500, entries))]
            ids += await producer.append_many(STREAM, batch)
        await producer.aclose()

        recoveries = []
        for round_ in range(kills):
            target = (round_ + 1) * entries // (kills + 1)

            async def progressed(target: int = target) -> bool:
                return int(await client.llen(SEEN)) >= target

            await poll(progressed, 60, f"{target} entries handled", everyone)
            victim = running.pop(0)
            names = await consumers(client)
            (victim_name,) = (n for n in names if n.split(":")[1] == str(victim.pid))
            killed_at = time.time()
            victim.proc.send_signal(signal.SIGKILL)
            await victim.proc.wait()
            held = {
                row["message_id"].decode()
                for row in await client.xpending_range(
                    STREAM, GROUP, "-", "+", 100_000, consumername=victim_name
                )
            }
            assert held, "the killed worker held no entries: nothing was in flight"

            async def released(name: str = victim_name) -> bool:
                return (await consumers(client)).get(name, 0) == 0

            await poll(released, lease + 30, "the killed worker's entries claimed", everyone)
            claimed_after = time.time() - killed_at
            recoveries.append((victim_name, held, killed_at, claimed_after))
            if running and len(running) < workers and round_ < kills - 1:
                running.append(
                    await start_worker(url, tmp_path / f"worker-r{round_}.log", lease, sleep)
                )
                everyone.append(running[-1])

        async def finished() -> bool:
            seen = {r[0] for r in await records(client)}
            return seen >= set(ids) and int((await client.xpending(STREAM, GROUP))["pending"]) == 0

        await poll(finished, 120, "every entry handled and acked", everyone)
        seen = await records(client)
        assert {r[0] for r in seen} == set(ids)  # none lost
        (group,) = await client.xinfo_groups(STREAM)
        assert group["pending"] == 0 and group["lag"] == 0
        before_kill = {pid for _, pid, at in seen if at < recoveries[0][2]}
        assert len(before_kill) >= 2, "the workers did not share the group's entries"

        for name, held, killed_at, claimed_after in recoveries:
            reruns = [at - killed_at for i, pid, at in seen if i in held and at > killed_at]
            reran = {i for i, pid, at in seen if i in held and at > killed_at}
            assert reran == held  # everything the dead worker held ran again elsewhere
            # Not taken before the lease ran out (its last renewal was <= lease/3 before the
            # kill), and taken soon after (the bound is generous: a loaded 2-core machine).
            assert min(reruns) >= lease - lease / 3 - 0.2, reruns
            assert claimed_after < lease + 10, claimed_after
            print(
                f"\nSIGKILL recovery (lease {lease:.1f} s): {len(held)} entries held by {name}; "
                f"claimed by the others {claimed_after:.2f} s after the kill; first ran again "
                f"after {min(reruns):.2f} s, last after {max(reruns):.2f} s; "
                f"{len(seen) - len(ids)} duplicate runs in total"
            )

        # The dead consumers, holding nothing now, are removed; a clean stop removes the rest.
        alive = {str(w.pid) for w in running}

        async def pruned() -> bool:
            return all(n.split(":")[1] in alive for n in await consumers(client))

        await poll(pruned, lease + 30, "dead consumers removed", everyone)
        for worker in running:
            worker.proc.send_signal(signal.SIGTERM)
        for worker in running:
            assert await asyncio.wait_for(worker.proc.wait(), 30) == 0, worker.output()
        assert await consumers(client) == {}
    finally:
        for worker in everyone:
            if worker.proc.returncode is None:
                worker.proc.kill()
                await worker.proc.wait()


async def test_sigkill_mid_run_loses_nothing(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    await crash_run(
        redis_url, redis_client, tmp_path, entries=2000, workers=2, kills=1, lease=2.0, sleep=0.01
    )


@pytest.mark.slow
async def test_repeated_sigkills_soak(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    """Three workers, several kills (a replacement starts after each); larger with AIOREDQ_SOAK."""
    await crash_run(
        redis_url,
        redis_client,
        tmp_path,
        entries=20_000 if SOAK else 3000,
        workers=3,
        kills=4 if SOAK else 2,
        lease=2.0,
        sleep=0.02,
    )
