"""The FastAPI example under a real uvicorn process: HTTP produces, the same process consumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from _servers import free_port

ROOT = Path(__file__).resolve().parent.parent


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
