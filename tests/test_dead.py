"""``dead`` against a real Redis: one handler's letters only, re-delivered to its own group,
linear requeue that loses and doubles nothing when killed, run twice at once or refused, exact
bytes through dead letters, cut bodies and a confirmed purge."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from _waiting import until_redis
from test_cli import APP, GROUP, MODULE, QUEUE, ROOT, STREAM, WAIT, cli_env, eventually, run_cli

from aioredq import App, Backoff, Message, Reject
from aioredq._cli import UsageError
from aioredq._inspect import dead_command

QUICK = Backoff(base=0.01, factor=1, cap=0.01, jitter=False)
DEAD_QUEUE, DEAD_STREAM = f"{{{QUEUE}}}:dead", f"{{{STREAM}}}:dead"


def two_groups(url: str, seen: list[tuple[str, dict[str, str]]], reject: set[str]) -> App:
    """Two groups on one stream: ``billing`` rejects what is in ``reject``, ``audit`` never."""
    app = App(url, shutdown_timeout=1)

    @app.stream("orders", group="billing", max_deliveries=1, backoff=QUICK, start="earliest")
    async def billing(body: dict[str, str], message: Message) -> None:
        seen.append(("billing", body))
        if body["n"] in reject:
            raise Reject("refused by billing")

    @app.stream("orders", group="audit", max_deliveries=1, backoff=QUICK, start="earliest")
    async def audit(body: dict[str, str]) -> None:
        seen.append(("audit", body))

    return app


async def test_a_stream_letter_goes_back_to_its_own_group_only(redis_url: str) -> None:
    rc = redis.asyncio.Redis.from_url(redis_url)
    seen: list[tuple[str, dict[str, str]]] = []
    reject = {"1", "2"}
    app = two_groups(redis_url, seen, reject)
    try:
        async with app:
            for n in ("1", "2", "3"):
                await app.append("orders", {"n": n})
            await until_redis(lambda: rc.xlen("{orders}:dead"), 2, "billing's 2 dead letters")
            await until_redis(lambda: rc.xpending("orders", "audit"), _empty(), "audit done")
        # Another group's letter (written by hand) and one that names no group (another
        # program's): billing's handler acts on its own and the unnamed one.
        await rc.xadd(
            "{orders}:dead", {"original_id": "1-1", "group": "audit", "fields": '{"n": "9"}'}
        )
        with pytest.raises(UsageError, match="several groups"):
            await dead_command(app, "orders", show=5, requeue=None, requeue_all=False, purge=False)

        reject.clear()
        seen.clear()
        assert await requeue(app, "billing") == 0
        letters = await rc.xrange("{orders}:dead")
        assert [f[b"group"] for _, f in letters] == [b"audit"]  # the other group's is left
        async with app:
            await until_redis(lambda: rc.xpending("orders", "billing"), _empty(), "billing")
            await until_redis(lambda: rc.xpending("orders", "audit"), _empty(), "audit")
            await until_redis(lambda: _lag(rc, "audit"), 0, "audit to read the requeued")
            await until_redis(lambda: _lag(rc, "billing"), 0, "billing to read the requeued")
        assert sorted(seen, key=str) == [("billing", {"n": "1"}), ("billing", {"n": "2"})]

        # Purge: only billing's letters (none left) go; audit's stays.
        await rc.xadd("{orders}:dead", {"original_id": "1-2", "group": "billing", "fields": "{}"})
        code = await dead_command(
            app, "billing", show=None, requeue=None, requeue_all=False, purge=True, yes=True
        )
        assert code == 0
        assert [f[b"group"] for _, f in await rc.xrange("{orders}:dead")] == [b"audit"]
    finally:
        await rc.aclose()


def _empty() -> dict[str, Any]:
    return {"pending": 0, "min": None, "max": None, "consumers": []}


async def _lag(rc: redis.asyncio.Redis, group: str) -> int:
    [info] = [g for g in await rc.xinfo_groups("orders") if g["name"] == group.encode()]
    return int(info["lag"])


async def requeue(app: App, name: str, *ids: str) -> int:
    return await dead_command(
        app, name, show=None, requeue=list(ids), requeue_all=not ids, purge=False
    )


# interrupted, concurrent and refused requeues ---------------------------------------------------
def fill_queue_letters(r: redis.Redis, total: int, bad: int = 0) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(total):
        pipe.lpush(DEAD_QUEUE, json.dumps({"id": f"m{i}", "body": f"item-{i}", "attempts": 5}))
        if bad and i % (total // bad) == 0:
            pipe.lpush(DEAD_QUEUE, f"not json {i}")
    pipe.execute()


def fill_stream_letters(r: redis.Redis, total: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(total):
        fields = json.dumps({"n": str(i)})
        pipe.xadd(DEAD_STREAM, {"original_id": f"1-{i}", "group": GROUP, "fields": fields})
    pipe.execute()


def fill(kind: str, r: redis.Redis, total: int, bad: int = 0) -> str:
    """``total`` dead letters of the cli app's queue or stream; the handler's name."""
    if kind == "queue":
        fill_queue_letters(r, total, bad)
        return "job"
    fill_stream_letters(r, total)
    return "event"


def requeue_cli(redis_url: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*MODULE, "dead", APP, name, "--url", redis_url, "--requeue", "--all"],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def queue_outcome(r: redis.Redis) -> tuple[list[str], list[str]]:
    requeued = r.lrange(QUEUE, 0, -1)
    still = [x for x in r.lrange(DEAD_QUEUE, 0, -1)]
    return requeued, still


def stream_numbers(r: redis.Redis) -> tuple[list[str], list[str]]:
    requeued = [json.dumps({"n": f["n"]}) for _, f in r.xrange(STREAM)]
    still = [f["fields"] for _, f in r.xrange(DEAD_STREAM)]
    return requeued, still


@pytest.mark.parametrize("kind", ["queue", "stream"])
def test_a_requeue_killed_mid_run_loses_and_doubles_nothing(
    kind: str, redis_url: str, r: redis.Redis
) -> None:
    total = 20_000
    target = QUEUE if kind == "queue" else STREAM
    proc = requeue_cli(redis_url, fill(kind, r, total))
    try:
        deadline = time.monotonic() + WAIT
        # Pause writes as soon as the first page is moved, so the run is caught in the middle
        # whatever the machine's speed, then kill it while a script of it may be waiting.
        while not r.exists(target):
            assert proc.poll() is None and time.monotonic() < deadline, "the requeue to start"
        r.client_pause(5000, all=False)
        try:
            mid_run = r.llen(DEAD_QUEUE) if kind == "queue" else r.xlen(DEAD_STREAM)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            r.client_unpause()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert 0 < mid_run < total  # killed half way
    if kind == "queue":
        requeued, still = queue_outcome(r)
        still = [json.loads(x)["body"] for x in still]
        assert sorted(requeued + still) == sorted(f"item-{i}" for i in range(total))
        assert requeued[-1] == "item-0"  # oldest first: the queue keeps the original order
    else:
        requeued, still = stream_numbers(r)
        assert sorted(requeued + still) == sorted(json.dumps({"n": str(i)}) for i in range(total))


@pytest.mark.parametrize("kind", ["queue", "stream"])
def test_two_requeues_at_once_move_each_letter_once(
    kind: str, redis_url: str, r: redis.Redis
) -> None:
    total = 10_000
    name = fill(kind, r, total, bad=5)
    procs = [requeue_cli(redis_url, name) for _ in range(2)]
    errors = []
    for proc in procs:
        assert proc.stderr is not None
        errors.append(proc.stderr.read().decode())
        proc.stderr.close()
        proc.wait(WAIT)
    assert "Traceback" not in "".join(errors)
    if kind == "queue":
        requeued, still = queue_outcome(r)
        assert sorted(requeued) == sorted(f"item-{i}" for i in range(total))
        assert sorted(still) == sorted(f"not json {i}" for i in range(0, total, total // 5))
        assert "skipped dead letter" in "".join(errors)  # named, and left dead
    else:
        requeued, still = stream_numbers(r)
        assert sorted(requeued) == sorted(json.dumps({"n": str(i)}) for i in range(total))
        assert still == []


async def test_requeue_all_goes_past_identical_unreadable_letters(
    redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unreadable letters stay dead, however many pages apart and even when identical; every
    readable letter between them goes back."""
    for i in range(300):
        r.lpush(DEAD_QUEUE, "not json" if i in (0, 100, 150, 299) else json.dumps({"body": i}))
    app = App(redis_url)

    @app.task(QUEUE)
    async def job(body: str) -> None: ...

    assert await requeue(app, "job") == 1
    assert sorted(map(int, r.lrange(QUEUE, 0, -1))) == [
        i for i in range(300) if i not in (0, 100, 150, 299)
    ]
    assert r.lrange(DEAD_QUEUE, 0, -1) == ["not json"] * 4
    assert capsys.readouterr().err.count("skipped") == 1  # named once


def test_a_refused_write_keeps_every_letter(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        fill_queue_letters(r, 50)
        fill_stream_letters(r, 50)
        before = {k: r.dump(k) for k in (DEAD_QUEUE, DEAD_STREAM)}
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)
        for name in ("job", "event"):
            done = run_cli("dead", APP, name, "--url", server.url, "--requeue", "--all")
            assert done.returncode == 1, done.stderr
            assert "maxmemory" in done.stderr and "Traceback" not in done.stderr
        r.config_set("maxmemory", 0)
        assert {k: r.dump(k) for k in (DEAD_QUEUE, DEAD_STREAM)} == before
        assert not r.exists(QUEUE) and not r.exists(STREAM)
    finally:
        r.close()


# exact bytes ------------------------------------------------------------------------------------
async def test_non_utf8_stream_fields_go_through_dead_letters_byte_for_byte(
    redis_url: str, r: redis.Redis
) -> None:
    rc = redis.asyncio.Redis.from_url(redis_url)
    seen: list[dict[bytes, bytes]] = []
    rejecting = [True]
    app = App(redis_url, shutdown_timeout=1)

    @app.stream("raw", group="g", max_deliveries=1, backoff=QUICK, start="earliest")
    async def handle(body: dict[str, Any], message: Message) -> None:
        seen.append(message.fields or {})
        if rejecting[0]:
            raise Reject("no")

    original = {b"name\xfe": b"\xff\x00value", b"plain": b"text"}
    try:
        async with app:
            await rc.xadd("raw", original)
            await until_redis(lambda: rc.xlen("{raw}:dead"), 1, "the dead letter")
        [(_, letter)] = await rc.xrange("{raw}:dead")
        json.loads(letter[b"fields"].decode())  # readable UTF-8 JSON
        assert b"fields_b64" in letter
        # Another program's letter that cannot be put back: skipped, the rest goes on.
        await rc.xadd("{raw}:dead", {"original_id": "1-1", "group": "g", "fields": '"\\ud800"'})
        assert await requeue(app, "handle") == 1
        *_, (_, entry) = await rc.xrange("raw")
        assert entry == {**original, b"aioredq-group": b"g"}
        assert await rc.xlen("{raw}:dead") == 1
    finally:
        await rc.aclose()


# --show and --purge -----------------------------------------------------------------------------
def test_show_cuts_long_bodies_unless_full(redis_url: str, r: redis.Redis) -> None:
    body = "x" * 2_000_000
    r.lpush(DEAD_QUEUE, json.dumps({"id": "big", "body": body, "error": "E: \x1b[2J"}))
    shown = run_cli("dead", APP, "job", "--url", redis_url, "--show", "1")
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout) < 2000 and "--full shows all" in shown.stdout
    assert "\x1b" not in shown.stdout  # a letter cannot drive the terminal
    full = run_cli("dead", APP, "job", "--url", redis_url, "--show", "1", "--full")
    assert full.returncode == 0 and body in full.stdout


@pytest.mark.parametrize(("answer", "code", "left"), [("n", 1, 1), ("y", 0, 0)])
def test_purge_asks_on_a_terminal(
    answer: str, code: int, left: int, redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    r.lpush(DEAD_QUEUE, json.dumps({"id": "a", "body": "x"}))
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [*MODULE, "dead", APP, "job", "--url", redis_url, "--purge"],
        cwd=ROOT,
        env=cli_env(),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    seen = bytearray()

    def read() -> bytes:
        try:
            seen.extend(os.read(controller, 65536))
        except OSError:
            pass
        return bytes(seen)

    try:
        eventually(lambda: b"[y/N]" in read(), "the question")
        assert b"delete 1 dead letter(s) of 'job'" in seen
        os.write(controller, f"{answer}\n".encode())
        assert proc.wait(WAIT) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    assert r.llen(DEAD_QUEUE) == left


# oversized items ----------------------------------------------------------------------------------
@pytest.mark.parametrize("by_id", [False, True])
async def test_an_oversized_item_is_requeued_from_its_key_and_purged_with_it(
    redis_url: str, by_id: bool
) -> None:
    """A task item over max_body_bytes is kept byte for byte under ``{q}:dead:<id>``; ``dead``
    shows its size and key, requeues it from there (its key gone) and a purge takes the key
    too."""
    rc = redis.asyncio.Redis.from_url(redis_url)
    big = b"\xff" + b"x" * 5000  # not UTF-8, over the limit
    small = App(redis_url, max_body_bytes=1000)

    @small.task("big", max_attempts=1)
    async def handle(body: bytes) -> None:
        pass

    try:
        await rc.lpush("big", big)
        async with small:
            await until_redis(lambda: rc.llen("{big}:dead"), 1, "the dead letter")
        [raw] = await rc.lrange("{big}:dead", 0, -1)
        letter = json.loads(raw)
        assert letter["size"] == len(big) and "body" not in letter
        assert await rc.get(letter["body_key"]) == big
        assert "MessageTooLarge" in letter["error"]

        requeued = await dead_command(
            small,
            "handle",
            show=None,
            requeue=[letter["id"]] if by_id else [],
            requeue_all=not by_id,
            purge=False,
        )
        assert requeued == 0
        assert await rc.lrange("big", 0, -1) == [big]  # back as it was, byte for byte
        assert await rc.llen("{big}:dead") == 0
        assert await rc.exists(letter["body_key"]) == 0

        # Dead-lettered again: a purge deletes the letter and the key that keeps the item.
        async with small:
            await until_redis(lambda: rc.llen("{big}:dead"), 1, "the dead letter again")
        [raw] = await rc.lrange("{big}:dead", 0, -1)
        key = json.loads(raw)["body_key"]
        assert await rc.exists(key) == 1
        code = await dead_command(
            small, "handle", show=None, requeue=None, requeue_all=False, purge=True, yes=True
        )
        assert code == 0
        assert await rc.llen("{big}:dead") == 0 and await rc.exists(key) == 0
    finally:
        await small.aclose()
        await rc.aclose()
