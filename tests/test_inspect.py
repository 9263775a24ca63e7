"""``inspect`` and ``dead`` against a real Redis: the figures are exactly what Redis reports,
``--watch`` redraws until signalled, and a requeue moves each letter back whole or not at all."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from test_cli import APP, MODULE, QUEUE, ROOT, STOP_WITHIN, cli_env, eventually

from aioredq import App, Backoff, Message
from aioredq._exceptions import AioredqError
from aioredq._inspect import dead_command, figures, render_table

WATCH_APP = """
from aioredq import App

app = App()

@app.stream("w-events", group="w-group", lag_warning=2)
async def events(body: dict[str, str]) -> None: ...

@app.task("w-jobs")
async def jobs(body: str) -> None: ...
"""


def server_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def snapshot(r: redis.Redis) -> dict[str, Any]:
    return {key: r.dump(key) for key in sorted(r.keys("*"))}


def inspected_app(url: str) -> App:
    app = App(url)

    @app.task("iq")
    async def job(body: str) -> None: ...

    @app.stream("is", group="g")
    async def grouped(body: dict[str, str]) -> None: ...

    @app.stream("is")
    async def tail(body: dict[str, str]) -> None: ...

    @app.subscribe("ch1", "ch2")
    async def plain(body: str) -> None: ...

    @app.subscribe("sh", sharded=True)
    async def sharded(body: str) -> None: ...

    @app.subscribe(pattern="p-*")
    async def patterned(body: str) -> None: ...

    return app


# inspect: the figures are Redis's own -------------------------------------------------------------
async def test_figures_equal_what_raw_commands_report_with_no_worker_running(
    redis_url: str, r: redis.Redis
) -> None:
    now = server_ms(r)
    # Queue: 3 waiting, 2 delayed, 1 dead letter; one live and one silent consumer holding work.
    r.lpush("iq", "a", "b", "c")
    r.zadd("{iq}:delayed", {"x": now + 3_600_000, "y": now + 7_200_000})
    r.lpush("{iq}:dead", json.dumps({"id": "d", "body": "z", "error": "E: e"}))
    r.zadd("{iq}:consumers", {"alive": now + 60_000, "silent": now - 1})
    r.lpush("{iq}:processing:alive", "p1", "p2")
    r.lpush("{iq}:processing:silent", "p3")
    # Stream: 6 entries; consumer c1 holds 2, c2 holds 1; only c1 has a current heartbeat.
    ids = [r.xadd("is", {"n": str(i)}) for i in range(6)]
    r.xgroup_create("is", "g", "0")
    r.xreadgroup("g", "c1", {"is": ">"}, count=2)
    r.xreadgroup("g", "c2", {"is": ">"}, count=1)
    r.zadd("{is}:consumers:g", {"c1": now + 60_000})
    r.xadd("{is}:dead", {"original_id": "1-1", "error": "E: e"})
    subscribers = [r.pubsub() for _ in range(3)]
    subscribers[0].subscribe("ch1")
    subscribers[1].subscribe("ch1", "ch2")
    subscribers[2].ssubscribe("sh")
    try:
        eventually(lambda: r.pubsub_numsub("ch1")[0][1] == 2, "the subscribers")
        eventually(lambda: r.pubsub_shardnumsub("sh")[0][1] == 1, "the shard subscriber")
        before = snapshot(r)
        app = inspected_app(redis_url)
        read_from = server_ms(r)
        try:
            rows = {row["name"]: row for row in await figures(app)}
        finally:
            await app.aclose()
        read_until = server_ms(r)
        assert snapshot(r) == before

        job = rows["job"]
        assert job["length"] == r.llen("iq") == 3
        assert job["delayed"] == r.zcard("{iq}:delayed") == 2
        assert job["dead"] == r.llen("{iq}:dead") == 1
        assert job["processing"] == r.llen("{iq}:processing:alive") + r.llen(
            "{iq}:processing:silent"
        )
        assert job["processing"] == 3
        assert job["consumers"] == {"alive": 1, "dead": 1}

        [group] = r.xinfo_groups("is")
        grouped, tail = rows["grouped"], rows["tail"]
        assert grouped["length"] == tail["length"] == r.xlen("is") == 6
        assert grouped["pending"] == r.xpending("is", "g")["pending"] == group["pending"] == 3
        assert grouped["lag"] == group["lag"] == 3
        assert grouped["dead"] == tail["dead"] == r.xlen("{is}:dead") == 1
        assert grouped["consumers"] == {"alive": 1, "dead": 1}
        # The age of the oldest unfinished entry, from its id (when it was added).
        added = int(ids[0].split("-")[0])
        assert read_from - added - 1 <= grouped["oldest_pending_s"] * 1000 <= read_until - added + 1
        assert (tail["lag"], tail["pending"], tail["consumers"]) == (None, None, None)

        numsub = dict(r.pubsub_numsub("ch1", "ch2"))
        assert rows["plain"]["subscribers"] == numsub["ch1"] + numsub["ch2"] == 3
        assert rows["sharded"]["subscribers"] == dict(r.pubsub_shardnumsub("sh"))["sh"] == 1
        assert rows["patterned"]["subscribers"] is None  # NUMPAT is not per pattern

        # An entry deleted before the group read it: Redis reports lag nil; inspect counts.
        r.xdel("is", ids[4])
        assert r.xinfo_groups("is")[0]["lag"] is None
        app = inspected_app(redis_url)
        try:
            rows = {row["name"]: row for row in await figures(app)}
        finally:
            await app.aclose()
        last = r.xinfo_groups("is")[0]["last-delivered-id"]
        assert rows["grouped"]["lag"] == len(r.xrange("is", f"({last}", "+")) == 2
    finally:
        for p in subscribers:
            p.close()


# inspect --watch ----------------------------------------------------------------------------------
@pytest.fixture
def watch_app(tmp_path: Path, r: redis.Redis) -> dict[str, str]:
    """An app whose stream has lag 5 over a lag_warning of 2; the env to run it from."""
    (tmp_path / "watchapp.py").write_text(WATCH_APP)
    r.xgroup_create("w-events", "w-group", "0", mkstream=True)
    for i in range(5):
        r.xadd("w-events", {"n": str(i)})
    return cli_env(PYTHONPATH=str(tmp_path))


def watch_argv(redis_url: str) -> list[str]:
    return [*MODULE, "inspect", "watchapp:app", "--url", redis_url, "--watch", "--interval", "0.1"]


def stop(proc: subprocess.Popen[bytes], signum: int) -> int:
    proc.send_signal(signum)
    try:
        return proc.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"inspect --watch did not stop on {signum!r}")


def test_watch_without_a_terminal_redraws_and_stops_on_sigterm(
    redis_url: str, r: redis.Redis, watch_app: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "watch.out"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            watch_argv(redis_url), cwd=ROOT, env=watch_app, stdout=stdout, stderr=subprocess.STDOUT
        )
        try:
            eventually(lambda: out.read_bytes().count(b"\x1b[2J") >= 3, "3 redraws")
            r.xadd("w-events", {"n": "5"})
            eventually(lambda: b"lag 6 is over" in out.read_bytes(), "the new lag")
            assert stop(proc, signal.SIGTERM) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.read_text()
    assert "Traceback" not in text
    last = text.rsplit("\x1b[H\x1b[2J", 1)[1]
    assert "! events: lag 6 is over lag_warning 2" in last
    assert "! jobs" not in last  # a task queue has no lag


def watch_on_terminal(argv: list[str], env: dict[str, str], columns: int, redraws: int) -> bytes:
    """Run ``inspect --watch`` on a pseudo-terminal ``columns`` wide until it has drawn
    ``redraws`` times, stop it with SIGINT (exit 0) and return everything it wrote."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        # The terminal's own size, not one inherited from the environment (pytest-xdist's
        # workers, CI) in COLUMNS/LINES.
        env={
            **{k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")},
            "TERM": "xterm-256color",
        },
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    os.set_blocking(controller, False)
    seen = bytearray()

    def read() -> bytes:
        try:
            while chunk := os.read(controller, 65536):
                seen.extend(chunk)
        except (BlockingIOError, OSError):  # nothing to read yet / the terminal is closed
            pass
        return bytes(seen)

    try:
        eventually(lambda: read().count(b"aioredq inspect") >= redraws, f"{redraws} redraws")
        assert stop(proc, signal.SIGINT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        read()
        os.close(controller)
    return bytes(seen)


def test_watch_on_a_terminal_uses_rich_live_and_stops_on_sigint(
    redis_url: str, watch_app: dict[str, str]
) -> None:
    pytest.importorskip("rich")
    seen = watch_on_terminal(watch_argv(redis_url), watch_app, 200, 3)
    assert b"Traceback" not in seen
    assert b"\x1b[1A" in seen  # the cursor goes back up: redrawn in place
    assert b"\x1b[1;31m5\x1b[0m" in seen  # lag 5 in bold red
    assert b"! events: lag 5 is over lag_warning 2" in seen
    assert seen.rstrip().endswith(b"\x1b[?25h")  # the cursor is shown again on exit


# dead: requeue ----------------------------------------------------------------------------------
def failing_app(url: str, seen: list[tuple[str, int]], failing: list[bool]) -> App:
    app = App(url, shutdown_timeout=1)
    quick = Backoff(base=0.01, factor=1, cap=0.01, jitter=False)

    @app.task("dq", max_attempts=2, backoff=quick, lease=5)
    async def job(body: bytes, message: Message) -> None:
        seen.append(("job", message.attempt))
        if failing[0]:
            raise ValueError("not now")

    @app.stream("ds", group="g", max_deliveries=2, backoff=quick, lease=5, start="earliest")
    async def entry(body: dict[str, str], message: Message) -> None:
        seen.append(("entry", message.attempt))
        if failing[0]:
            raise ValueError("not now")

    return app


async def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20) -> None:
    import anyio

    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


@pytest.fixture
async def rc(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def requeue_all(app: App, name: str) -> int:
    return await dead_command(app, name, show=None, requeue=[], requeue_all=True, purge=False)


async def test_requeue_puts_letters_back_with_their_deliveries_counted_afresh(
    redis_url: str, rc: redis.asyncio.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[str, int]] = []
    failing = [True]
    app = failing_app(redis_url, seen, failing)
    foreign = [b"plain text", b"\xff\xfe not utf-8"]
    async with app:
        await app.enqueue("dq", b"bytes body")
        await rc.lpush("dq", *foreign)
        await app.append("ds", {"type": "email", "user": 42})

        async def all_dead() -> bool:
            return await rc.llen("{dq}:dead") == 3 and await rc.xlen("{ds}:dead") == 1

        await wait_for(all_dead, "3 + 1 dead letters")
    letters = [json.loads(x) for x in await rc.lrange("{dq}:dead", 0, -1)]
    assert sorted(letter["attempts"] for letter in letters) == [2, 2, 2]
    assert sum("body_b64" in letter for letter in letters) == 1

    assert await requeue_all(app, "job") == 0
    assert await requeue_all(app, "ds") == 0
    assert capsys.readouterr().out.count("requeued") == 2
    assert await rc.llen("{dq}:dead") == await rc.xlen("{ds}:dead") == 0
    items = await rc.lrange("dq", 0, -1)
    assert sorted(i for i in items if not i.startswith(b"{")) == sorted(foreign)  # exact bytes
    [envelope] = [json.loads(i) for i in items if i.startswith(b"{")]
    assert envelope["attempts"] == 0 and envelope["body_b64"]
    # The original fields, and the reserved field that addresses the entry to its group only.
    assert [f for _, f in await rc.xrange("ds")][-1] == {
        b"type": b"email",
        b"user": b"42",
        b"aioredq-group": b"g",
    }

    seen.clear()
    failing[0] = False
    async with app:

        async def drained() -> bool:
            return len(seen) == 4 and await rc.xpending("ds", "g") == {
                "pending": 0,
                "min": None,
                "max": None,
                "consumers": [],
            }

        await wait_for(drained, "the requeued messages to be handled")
    assert sorted(seen) == [("entry", 1), ("job", 1), ("job", 1), ("job", 1)]
    assert await rc.llen("dq") == 0


async def test_a_refused_requeue_keeps_the_letter(redis_url: str, rc: redis.asyncio.Redis) -> None:
    """A requeue that Redis refuses half way (here WRONGTYPE) must not have removed the letter:
    the script writes the copy before it deletes the letter."""
    app = failing_app(redis_url, [], [True])
    letter = json.dumps({"id": "L1", "queue": "dq", "body": "x", "error": "E", "attempts": 2})
    await rc.lpush("{dq}:dead", letter)
    await rc.set("dq", "not a list")
    dead_id = await rc.xadd("{ds}:dead", {"original_id": "1-1", "fields": '{"a": "1"}'})
    await rc.set("ds", "not a stream")
    for name in ("job", "entry"):
        with pytest.raises(AioredqError, match="WRONGTYPE"):
            await requeue_all(app, name)
    assert await rc.lrange("{dq}:dead", 0, -1) == [letter.encode()]
    assert [i for i, _ in await rc.xrange("{ds}:dead")] == [dead_id]


async def test_requeue_reports_unknown_ids_and_skips_letters_it_cannot_read(
    redis_url: str, rc: redis.asyncio.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    app = failing_app(redis_url, [], [True])
    await rc.lpush("{dq}:dead", b"not json", json.dumps({"id": "ok", "body": "x"}))
    code = await dead_command(
        app, "dq", show=None, requeue=["ok", "nope"], requeue_all=False, purge=False
    )
    assert code == 1
    captured = capsys.readouterr()
    assert "requeued 1 dead letter(s)" in captured.out
    assert "no dead letter with id nope" in captured.err
    assert await rc.lrange("dq", 0, -1) == [b"x"]
    assert await requeue_all(app, "dq") == 1
    assert "skipped" in capsys.readouterr().err
    assert await rc.lrange("{dq}:dead", 0, -1) == [b"not json"]


def test_a_requeue_killed_half_way_loses_and_doubles_nothing(
    redis_url: str, r: redis.Redis
) -> None:
    total = 3000
    dead_key = f"{{{QUEUE}}}:dead"
    pipe = r.pipeline(transaction=False)
    for i in range(total):
        pipe.lpush(dead_key, json.dumps({"id": f"m{i}", "body": f"item-{i}", "attempts": 5}))
    pipe.execute()
    proc = subprocess.Popen(
        [*MODULE, "dead", APP, "job", "--url", redis_url, "--requeue", "--all"],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        eventually(lambda: r.llen(QUEUE) >= 100 or proc.poll() is not None, "the requeue to start")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    requeued = r.lrange(QUEUE, 0, -1)
    still_dead = [json.loads(x)["body"] for x in r.lrange(dead_key, 0, -1)]
    assert len(requeued) + len(still_dead) == total
    assert sorted(requeued + still_dead) == sorted(f"item-{i}" for i in range(total))
    assert requeued[-1] == "item-0"  # oldest first: the queue keeps the original order


# inspect: unreadable figures and the oldest age ---------------------------------------------------
async def test_a_wrong_typed_key_marks_its_figure_and_the_others_are_read(
    redis_url: str, r: redis.Redis
) -> None:
    r.lpush("iq", "a", "b")
    r.set("{iq}:delayed", "not a zset")
    r.xadd("is", {"n": "1"})
    r.xgroup_create("is", "g", "0")
    r.lpush("{is}:dead", "not a stream")
    app = inspected_app(redis_url)
    try:
        rows = {row["name"]: row for row in await figures(app)}
    finally:
        await app.aclose()
    job, grouped = rows["job"], rows["grouped"]
    assert job["length"] == 2 and job["dead"] == 0 and job["consumers"] == {"alive": 0, "dead": 0}
    assert job["delayed"] is None and "WRONGTYPE" in job["errors"]["delayed"]
    assert list(job["errors"]) == ["delayed"]
    assert grouped["length"] == 1 and grouped["lag"] == 1
    assert grouped["dead"] is None and "WRONGTYPE" in grouped["errors"]["dead"]
    assert "errors" not in rows["plain"]
    table = render_table(list(rows.values()))
    assert "ERR" in table
    assert "! job: delayed unreadable: WRONGTYPE" in table
    assert "! grouped: dead unreadable: WRONGTYPE" in table


async def test_oldest_is_the_age_of_the_oldest_unfinished_message(
    redis_url: str, r: redis.Redis
) -> None:
    now = server_ms(r)
    # Tasks: from the envelope's enqueued_at, waiting or held by a consumer.
    envelope = '{"aioredq":1,"attempts":0,"id":"a","enqueued_at":%.3f,"body":"x"}'
    r.lpush("iq", envelope % ((now - 50_000) / 1000))
    r.zadd("{iq}:consumers", {"c": now + 60_000})
    r.lpush("{iq}:processing:c", envelope.replace(":0,", ":1,") % ((now - 90_000) / 1000))
    # Streams: from the entry id; an entry held 8 s and kept fresh (XCLAIM JUSTID, as a live
    # consumer's upkeep does) is 8 s old, and so is one handed back at a graceful stop.
    r.xadd("is", {"n": "1"}, id=f"{now - 8_000}-0")
    r.xgroup_create("is", "g", "0")
    r.xreadgroup("g", "c1", {"is": ">"}, count=1)
    r.xclaim("is", "g", "c1", 0, [f"{now - 8_000}-0"], justid=True)
    r.xadd("is", {"n": "2"}, id=f"{now - 4_000}-0")  # not delivered yet

    async def oldest() -> dict[str, Any]:
        app = inspected_app(redis_url)
        try:
            return {row["name"]: row["oldest_pending_s"] for row in await figures(app)}
        finally:
            await app.aclose()

    ages = await oldest()
    elapsed = (server_ms(r) - now) / 1000
    assert 90 <= ages["job"] <= 90 + elapsed + 0.01
    assert 8 <= ages["grouped"] <= 8 + elapsed + 0.01
    assert ages["tail"] is None
    # Handed back: made claimable at once by an idle time of a year; the age stays 8 s.
    r.xclaim("is", "g", "c1", 0, [f"{now - 8_000}-0"], idle=365 * 24 * 3600 * 1000, justid=True)
    r.lpop("{iq}:processing:c")
    ages = await oldest()
    elapsed = (server_ms(r) - now) / 1000
    assert 8 <= ages["grouped"] <= 8 + elapsed + 0.01
    assert 50 <= ages["job"] <= 50 + elapsed + 0.01


def test_watch_with_rich_fits_100_columns(redis_url: str, tmp_path: Path) -> None:
    pytest.importorskip("rich")
    (tmp_path / "wideapp.py").write_text(WIDE_APP)
    argv = [*MODULE, "inspect", "wideapp:app", "--url", redis_url, "--watch", "--interval", "0.1"]
    seen = watch_on_terminal(argv, cli_env(PYTHONPATH=str(tmp_path)), 100, 2)
    for name in (
        b"settle_customer_invoices",
        b"billing-invoices-eu-west",
        b"shipment_tracking_events",
    ):
        assert name in seen, name  # whole, not cut with an ellipsis
    assert "…".encode() not in seen


WIDE_APP = """
from aioredq import App

app = App()

@app.task("billing-invoices-eu-west")
async def settle_customer_invoices(body: str) -> None: ...

@app.stream("shipment_tracking_events", group="warehouse-dispatchers")
async def dispatch_warehouse_orders(body: dict[str, str]) -> None: ...

@app.subscribe("customer-notifications")
async def push_customer_notices(body: str) -> None: ...
"""
