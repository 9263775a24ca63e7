"""The FastAPI example under a real uvicorn process: HTTP produces, the same process consumes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from _servers import free_port

ROOT = Path(__file__).resolve().parent.parent
SOAK = bool(os.environ.get("AIOREDQ_SOAK"))


def _wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_fastapi_example_produces_and_consumes_under_uvicorn(redis_url: str) -> None:
    port = free_port()
    env = {**os.environ, "AIOREDQ_URL": redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app:api", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/stats", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for(up)
        assert httpx.post(f"{base}/jobs", json={"to": "a@b.c"}).json()["id"]
        assert httpx.post(f"{base}/notifications", json={"type": "email", "user": 42}).json()
        assert httpx.post(f"{base}/notices", params={"text": "hi"}).json() == {"receivers": 1}

        def all_handled() -> bool:
            stats = httpx.get(f"{base}/stats").json()
            return all(stats[name]["succeeded"] == 1 for name in ("send_email", "notify", "notice"))

        _wait_for(all_handled)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn re-raises the signal once its shutdown is complete
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "sending email to a@b.c" in out
    assert "notifying user 42 by email" in out
    assert "Application shutdown complete" in out
    with redis.Redis.from_url(redis_url) as client:
        assert client.keys("{jobs}:processing:*") == []
        assert client.llen("jobs") == 0
        assert client.xpending("notifications", "senders")["pending"] == 0


def test_fastapi_sigterm_mid_backlog_finishes_or_hands_back_every_job(redis_url: str) -> None:
    """SIGTERM while a backlog drains: each job was either handled or is back on the queue."""
    port = free_port()
    env = {**os.environ, "AIOREDQ_URL": redis_url}
    total = 30_000
    with redis.Redis.from_url(redis_url) as client:
        client.lpush("jobs", *[f'{{"to": "user{i}@example.com"}}' for i in range(total)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.fastapi_app:api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_for(lambda: client.llen("jobs") < total)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM), out
        assert "Application shutdown complete" in out
        handled = {
            line.split("sending email to ")[1].split()[0]
            for line in out.splitlines()
            if "sending email to " in line
        }
        left = {raw.decode().split('"')[3] for raw in client.lrange("jobs", 0, -1)}
        assert handled | left == {f"user{i}@example.com" for i in range(total)}
        assert client.keys("{jobs}:processing:*") == []
        assert client.zcard("{jobs}:consumers") == 0


@pytest.mark.slow
async def test_fastapi_answers_concurrent_posts_that_each_enqueue(
    redis_url: str, tmp_path: Path
) -> None:
    """A web app's burst while Redis is slow: requests at once, each enqueueing one job;
    none fails. 2,000 with
    AIOREDQ_SOAK (10-20 s of client and server CPU on a 2-core machine), else 300."""
    port = free_port()
    env = {**os.environ, "AIOREDQ_URL": redis_url}
    total = 2000 if SOAK else 300
    with (tmp_path / "uvicorn.log").open("w+") as log:  # a pipe would fill and stall uvicorn
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "uvicorn", "examples.fastapi_app:api", "--port", str(port)),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        limits = httpx.Limits(max_connections=total, max_keepalive_connections=total)
        try:
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:

                async def up() -> bool:
                    try:
                        return (await http.get("/stats", timeout=1)).status_code == 200
                    except httpx.HTTPError:
                        return False

                await _until_async(up)
                # Redis holds writes for 2 s, as a busy or failing-over server does: the
                # requests that arrive meanwhile all wait on Redis at once, far more of them
                # than the app has connections.
                async with redis.asyncio.Redis.from_url(redis_url) as client:
                    await client.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
                replies = await asyncio.gather(
                    *(http.post("/jobs", json={"to": f"u{i}@b.c"}) for i in range(total)),
                    return_exceptions=True,
                )
                errors = [r for r in replies if not isinstance(r, httpx.Response)]
                failed = [r for r in replies if isinstance(r, httpx.Response) and r.is_error]
                assert not errors and not failed, (errors[:3], failed[:3])
                ids = {r.json()["id"] for r in replies if isinstance(r, httpx.Response)}
                assert len(ids) == total

                async def all_handled() -> bool:
                    stats = (await http.get("/stats")).json()
                    return bool(stats["send_email"]["succeeded"] == total)

                await _until_async(all_handled)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), timeout=30)
        log.seek(0)
        out = log.read()
    assert proc.returncode in (0, -signal.SIGTERM), out[-2000:]
    assert "Too many connections" not in out and "Traceback" not in out, out[-2000:]


async def _until_async(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
