"""``aioredq acl``: a worker of every model, ``inspect`` and ``dead`` run under exactly the
printed ACL user on a real server, and Redis's ``ACL LOG`` records no denial."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from _servers import LocalCluster, RedisServer

from aioredq import App
from aioredq._acl import acl_line, glob_escape

APP_MODULE = """
import json, os
from aioredq import App, Reject

app = App()

def record(name, body):
    with open(os.environ["ACL_APP_OUT"], "a") as out:
        out.write(json.dumps([name, body]) + "\\n")

@app.task("jobs", lease=0.5, max_attempts=2, rate="1000/s")
async def job(text: str) -> None:
    if text == "reject":
        raise Reject("no")
    record("job", text)

@app.task("{tenant}jobs", lease=0.5, result_ttl=60, timeout=10)
async def tenant_job(text: str) -> None:
    record("tenant_job", text)

@app.stream("events", group="g", lease=0.5, start="earliest", max_deliveries=2, maxlen=1000,
            rate="1000/s")
async def event(entry: dict) -> None:
    if entry.get("kind") == "reject":
        raise Reject("no")
    record("event", entry)

@app.stream("events")
async def tail(entry: dict) -> None:
    record("tail", entry)

@app.subscribe("notice")
async def notice(text: str) -> None:
    record("notice", text)

@app.subscribe(pattern="mail-*")
async def mail(text: str) -> None:
    record("mail", text)

@app.subscribe("orders", sharded=True)
async def order(text: str) -> None:
    record("order", text)
"""
USER, PASSWORD = "worker", "worker-pw"


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aioredq", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def read_records(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_acl_line_for_a_small_app() -> None:
    app = App("redis://127.0.0.1:1/0")

    @app.task("jobs")
    async def job(text: str) -> None: ...

    @app.subscribe(pattern="mail-*")
    async def mail(text: str) -> None: ...

    line = acl_line(app, "worker")
    assert line.startswith("ACL SETUSER worker on resetkeys ~jobs ~{jobs}:* resetchannels &mail-*")
    words = line.split()
    assert "-@all" in words and "+blmove" in words and "+psubscribe" in words
    assert "+subscribe" not in words and "+xadd" not in words and "+select" not in words
    assert glob_escape("a*b[c]?") == "a\\*b\\[c\\]\\?"


def test_worker_inspect_and_dead_run_under_exactly_the_printed_acl(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    admin = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    try:
        run_under_the_printed_acl(admin, f"127.0.0.1:{fresh_redis.port}/0", "redis", tmp_path)
    finally:
        admin.close()


@pytest.mark.cluster
def test_the_printed_acl_on_a_cluster(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    admin = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], decode_responses=True)
    admin.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    try:
        run_under_the_printed_acl(
            admin, f"127.0.0.1:{redis_cluster.ports[0]}", "redis+cluster", tmp_path
        )
    finally:
        nodes = redis.RedisCluster.ALL_NODES
        admin.execute_command("ACL", "DELUSER", USER, target_nodes=nodes)
        admin.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
        admin.close()


def on_every_node(admin: Any, *args: Any) -> list[Any]:
    """A command's replies from every node (one node: a list of one)."""
    if isinstance(admin, redis.RedisCluster):
        replies = admin.execute_command(*args, target_nodes=redis.RedisCluster.ALL_NODES)
        return list(replies.values()) if isinstance(replies, dict) else [replies]
    return [admin.execute_command(*args)]


def subscribers(admin: Any) -> int:
    """PUBSUB NUMSUB notice, summed over the nodes."""
    total = 0
    for reply in on_every_node(admin, "PUBSUB", "NUMSUB", "notice"):
        pair = reply[0] if isinstance(reply[0], list | tuple) else reply
        total += int(pair[1])
    return total


def run_under_the_printed_acl(admin: Any, where: str, scheme: str, tmp_path: Path) -> None:
    """Print the app's ACL line, create that user, and run a worker of every model,
    ``inspect`` and ``dead`` as the user; Redis must log no denial."""
    (tmp_path / "aclapp.py").write_text(APP_MODULE)
    out = tmp_path / "out.jsonl"
    user_url = f"{scheme}://{USER}:{PASSWORD}@{where}"
    env = {**os.environ, "AIOREDQ_URL": user_url, "ACL_APP_OUT": str(out)}

    printed = cli("acl", "aclapp:app", "--user", USER, cwd=tmp_path, env=env)
    assert printed.returncode == 0, printed.stderr
    [line] = printed.stdout.splitlines()
    words = shlex.split(line)
    assert words[:3] == ["ACL", "SETUSER", USER]
    on_every_node(admin, *words, f">{PASSWORD}")
    on_every_node(admin, "ACL", "LOG", "RESET")

    # A consumer that died holding work, for each reliable model: the worker takes it over.
    admin.zadd("{jobs}:consumers", {"ghost": 1})
    admin.rpush("{jobs}:processing:ghost", "left by a dead worker")
    admin.xadd("events", {"n": "left"})
    admin.xgroup_create("events", "g", "0")
    admin.xreadgroup("g", "ghost", {"events": ">"}, count=1)
    admin.zadd("{events}:consumers:g", {"ghost": 1})

    worker = subprocess.Popen(
        [sys.executable, "-m", "aioredq", "aclapp:app", "--shutdown-timeout", "2"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: subscribers(admin) == 1, "the subscriber")
        produce = (
            "import asyncio, aclapp\n"
            "async def main():\n"
            "    app = aclapp.app\n"
            "    await app.enqueue('jobs', 'one')\n"
            "    await app.enqueue('jobs', 'later', delay=0.2)\n"
            "    await app.enqueue_many('jobs', ['reject'])\n"
            "    await app.enqueue('jobs', 'urgent', priority=7)\n"
            "    await app.enqueue('jobs', 'keyed', key='k', key_ttl=1)\n"
            "    await app.enqueue('jobs', 'keyed again', key='k')\n"
            "    await app.enqueue('{tenant}jobs', 't')\n"
            "    assert await app.request('{tenant}jobs', 'r', timeout=30) is None\n"
            "    later = await app.enqueue('{tenant}jobs', 'never', delay=60)\n"
            "    assert await app.cancel('{tenant}jobs', later)\n"
            "    await app.append('events', {'n': '1'})\n"
            "    await app.append('events', {'kind': 'reject'})\n"
            "    await app.publish('notice', 'hi')\n"
            "    await app.publish('mail-x', 'mail')\n"
            "    await app.publish('orders', 'o1', sharded=True)\n"
            "    await app.aclose()\n"
            "asyncio.run(main())\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", produce], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr

        def handled() -> bool:
            names = [r[0] for r in read_records(out)]
            return (
                {"job", "tenant_job", "event", "tail", "notice", "mail", "order"} <= set(names)
                # one, later, urgent, keyed, and the dead worker's item
                and names.count("job") >= 5
                and names.count("event") >= 2  # 1, and the dead worker's entry
                and admin.llen("{jobs}:dead") == 1
                and admin.xlen("{events}:dead") == 1
            )

        wait_for(handled, "every model's messages, the taken-over work and the dead letters")
        for args in (
            ["inspect", "aclapp:app"],
            ["inspect", "aclapp:app", "--json"],
            ["dead", "aclapp:app", "job", "--show", "5"],
            ["dead", "aclapp:app", "event", "--show", "5"],
            ["dead", "aclapp:app", "job", "--requeue", "--all"],
            ["dead", "aclapp:app", "event", "--requeue", "--all"],
            ["pause", "aclapp:app", "job"],
            ["pause", "aclapp:app", "event"],
            ["inspect", "aclapp:app", "--json"],
            ["resume", "aclapp:app", "job"],
            ["resume", "aclapp:app", "event"],
        ):
            done = cli(*args, cwd=tmp_path, env=env)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        # The requeued letters are rejected again and dead again: then purge them.
        wait_for(
            lambda: admin.llen("{jobs}:dead") == 1 and admin.xlen("{events}:dead") == 1,
            "the requeued letters to be dead again",
        )
        for name in ("job", "event"):
            done = cli("dead", "aclapp:app", name, "--purge", "--yes", cwd=tmp_path, env=env)
            assert done.returncode == 0, done.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        _, log = worker.communicate(timeout=60)
    assert worker.returncode == 0, log
    denials = on_every_node(admin, "ACL", "LOG")
    assert all(d == [] for d in denials), denials
