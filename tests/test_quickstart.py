"""``examples/quickstart.py`` runs as documented: on memory:// by default, or on a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def run_quickstart(url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AIOREDQ_URL"}
    if url is not None:
        env["AIOREDQ_URL"] = url
    return subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=EXAMPLE.parent,
        check=False,
    )


def check_output(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    receptions = [line for line in lines if line.split()[0] in ("subscribe", "task", "stream")]
    assert len(receptions) == 6, done.stdout
    kinds = sorted(line.split()[0] for line in receptions)
    assert kinds == ["stream", "stream", "subscribe", "subscribe", "task", "task"]
    assert "'deploying at 10:00'" in done.stdout and "'deployed'" in done.stdout
    assert "to='a@example.com'" in done.stdout and "to='b@example.com'" in done.stdout
    assert "user=42" in done.stdout and "user=7" in done.stdout
    assert lines[-1] == "stats: {'notice': 2, 'send_email': 2, 'notify': 2}"
    assert "Traceback" not in done.stderr


def test_quickstart_runs_in_memory() -> None:
    check_output(run_quickstart(None))


def test_quickstart_runs_against_a_real_server(redis_url: str) -> None:
    check_output(run_quickstart(redis_url))
