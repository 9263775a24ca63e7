"""Foreign text (message ids, error texts, names) cannot forge log lines: one record is one line."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from aioredq._logging import escape

FORGED = "\n2026-01-01 00:00:00,000 CRITICAL aioredq: forged line\r\x1b[2J\u2028"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
APP_MODULE = """
from aioredq import App
app = App()

@app.task("forge-jobs", max_attempts=1)
async def job(text: str) -> None:
    raise ValueError("bad body" + text)

@app.task("forge-retry", max_attempts=2)
async def retried(text: str) -> None:
    raise ValueError("again" + text)
"""


def test_escape_leaves_one_line() -> None:
    assert escape(FORGED) == (
        "\\n2026-01-01 00:00:00,000 CRITICAL aioredq: forged line\\r\\x1b[2J\\u2028"
    )
    assert escape("tab\tand é€ stay") == "tab\tand é€ stay"


def test_the_aioredq_logger_escapes_its_arguments(caplog: pytest.LogCaptureFixture) -> None:
    import aioredq  # noqa: F401  (importing aioredq installs the escaping)

    with caplog.at_level(logging.INFO, logger="aioredq"):
        logging.getLogger("aioredq").warning("id=%s error=%r", f"x{FORGED}", ValueError("a\nb"))
    [record] = caplog.records
    assert "\n" not in record.getMessage() and "\r" not in record.getMessage()
    assert record.getMessage().startswith("id=x\\n2026-01-01")


def forged_envelope(queue_id: str) -> str:
    envelope = {"aioredq": 1, "attempts": 0, "id": queue_id, "body": FORGED}
    return json.dumps(envelope, separators=(",", ":"))


def _worker_log(redis_url: str, tmp_path: Path, queues: list[str], *options: str) -> str:
    """Run the forging app's worker through the CLI until a forged job is dead-lettered on each
    of ``queues``; its stderr."""
    (tmp_path / "forgeapp.py").write_text(APP_MODULE)
    client = redis.Redis.from_url(redis_url)
    for n, queue in enumerate(queues, 1):
        client.lpush(queue, forged_envelope(f"id-{n}{FORGED}"))
    worker = subprocess.Popen(
        [sys.executable, "-m", "aioredq", "forgeapp:app", "--url", redis_url, *options],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while sum(client.llen(f"{{{q}}}:dead") for q in queues) < len(queues):
            assert time.monotonic() < deadline, "the forged jobs were not dead-lettered"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, log = worker.communicate(timeout=60)
        client.close()
    return log


def test_a_forged_message_id_is_one_log_line(redis_url: str, tmp_path: Path) -> None:
    log = _worker_log(redis_url, tmp_path, ["forge-jobs", "forge-retry"], "--log-level", "DEBUG")
    lines = log.splitlines()
    # Every line is a record (it starts with a timestamp) or a traceback line under one.
    for line in lines:
        assert TIMESTAMP.match(line) or line.startswith("    "), line
    assert not any(line.startswith("2026-01-01 00:00:00,000 CRITICAL") for line in lines)
    mentions = [line for line in lines if "forged line" in line and "id=id-" in line]
    dead = [line for line in mentions if "id=id-1" in line]
    assert len(dead) == 1 and " ERROR aioredq: " in dead[0], log
    retried = [line for line in mentions if "id=id-2" in line]
    assert len(retried) == 2, log  # the failed attempt (traceback under it) and the dead letter
    assert "\x1b" not in log and "\r" not in log and "\u2028" not in log


JSON_DEBUG = ("--log-format", "json", "--log-level", "DEBUG")


def test_json_log_lines_keep_foreign_text_inside_their_strings(
    redis_url: str, tmp_path: Path
) -> None:
    log = _worker_log(redis_url, tmp_path, ["forge-retry"], *JSON_DEBUG)
    records = [json.loads(line) for line in log.splitlines()]  # every line is one object
    assert "\x1b" not in log and "\r" not in log and "\u2028" not in log
    failed = [r for r in records if r.get("message_id") == f"id-1{FORGED}"]
    assert [(r["level"], r["attempt"]) for r in failed] == [("WARNING", 1), ("ERROR", 2)]
    for record in failed:
        assert record["logger"] == "aioredq" and record["handler"] == "retried"
        assert record["key"] == "forge-retry" and record["error"] == f"ValueError: again{FORGED}"
        assert "trace_id" not in record  # no tracing here
    assert "Traceback" in failed[0]["exception"]  # DEBUG: the traceback, inside the string
    assert {"time", "level", "logger", "message"} <= records[0].keys()
