"""The dashboard in a real browser (Debian's chromium driven by Playwright), with a worker and
the ``dashboard`` command running as processes against a real Redis."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from _servers import free_port

from aioredq import App

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.dashboard_app:app"
PERIODIC = "tests.apps.dashboard_periodic_app:app"
TOKEN = "s3cret-token"
XSS = "fail <img src=x onerror=alert(1)>"
WAIT = 30.0

CHROMIUM = shutil.which("chromium")
try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None
pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None, reason="playwright is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)"
    ),
]


def eventually(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {WAIT:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/session", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _serve(redis_url: str, tmp_path: Path, app: str) -> Iterator[dict[str, Any]]:
    """A worker (failing ``fail...`` bodies while the flag file exists) and the dashboard."""
    flag, out = tmp_path / "failing", tmp_path / "handled.txt"
    flag.touch()
    out.touch()
    env = {**os.environ, "DASHBOARD_APP_FAIL": str(flag), "DASHBOARD_APP_OUT": str(out)}
    port = free_port()
    py = [sys.executable, "-m", "aioredq"]
    logs = (tmp_path / "worker.log").open("w"), (tmp_path / "dashboard.log").open("w")
    worker = subprocess.Popen([*py, app, "--url", redis_url], cwd=ROOT, env=env, stderr=logs[0])
    dash = subprocess.Popen(
        [*py, "dashboard", app, "--url", redis_url, "--port", str(port), "--token", TOKEN],
        cwd=ROOT,
        env=env,
        stderr=logs[1],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: _answers(base), "the dashboard to answer")
        yield {"base": base, "flag": flag, "out": out, "url": redis_url}
    finally:
        _stop(dash)
        _stop(worker)
        for log in logs:
            log.close()


@pytest.fixture
def services(redis_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    yield from _serve(redis_url, tmp_path, APP)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    assert sync_playwright is not None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.dialogs = dialogs  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()


def _figure(page: Page, handler: str, figure: str) -> str:
    cell = page.locator(f'#handlers tr[data-handler="{handler}"] td[data-figure="{figure}"]')
    return str(cell.text_content() or "")


def test_the_page_at_work(services: dict[str, Any], page: Page, tmp_path: Path) -> None:
    r = redis.Redis.from_url(services["url"])
    page.goto(services["base"] + "/")
    expect(page.locator('#handlers tr[data-handler="job"]')).to_be_visible()
    expect(page.locator("#mode")).to_have_text("read-only until you log in")
    page.screenshot(path=str(tmp_path / "1-loaded.png"), full_page=True)

    # Figures change as messages flow: dead letters appear (the XSS body among them).
    async def produce() -> None:
        async with App(services["url"]) as app:
            for i in range(5):
                await app.enqueue("dash-jobs", f"fail {i}")
            await app.enqueue("dash-jobs", XSS)
            for i in range(30):
                await app.enqueue("dash-jobs", f"ok {i}")
            for i in range(10):
                await app.append("dash-events", {"n": str(i)})

    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, produce()).result()
    eventually(lambda: _figure(page, "job", "dead") == "6", "the page to show 6 dead letters")
    eventually(lambda: "ok 29" in services["out"].read_text(), "the worker to handle the rest")

    # A purge without the token is refused, and offers nothing to click.
    page.locator('#handlers tr[data-handler="job"] button').click()
    expect(page.locator("#letters tbody tr")).to_have_count(6)
    assert page.locator("#purge").is_hidden()
    status = page.evaluate(
        """async () => (await fetch("api/purge", {method: "POST",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({handler: "job"})})).status"""
    )
    assert status == 401
    assert r.llen("{dash-jobs}:dead") == 6

    # The XSS body shows as text, and nothing ran.
    expect(page.locator("#letters pre", has_text="<img src=x onerror=alert(1)>")).to_have_count(1)
    assert page.locator("#letters img").count() == 0
    assert page.dialogs == []  # type: ignore[attr-defined]

    # Log in, requeue one letter by clicking: it is handled once failing is off.
    page.fill('#login input[name="token"]', TOKEN)
    page.click("#login button")
    expect(page.locator("#mode")).to_have_text("logged in")
    services["flag"].unlink()
    page.locator('#handlers tr[data-handler="job"] button').click()
    row = page.locator("#letters tbody tr", has_text="fail 2")
    row.get_by_role("button", name="Requeue").click()
    expect(page.locator("#dead-message")).to_have_text("requeued 1")
    eventually(lambda: "fail 2" in services["out"].read_text(), "the requeued letter handled")
    expect(page.locator("#letters tbody tr")).to_have_count(5)
    eventually(lambda: _figure(page, "job", "dead") == "5", "the page to show 5 dead letters")
    eventually(lambda: page.locator("#chart-backlog path").count() >= 2, "the charts to draw lines")
    page.screenshot(path=str(tmp_path / "2-at-work.png"), full_page=True)

    # Purge, after the in-page confirmation.
    page.click("#purge")
    expect(page.locator("#confirm-text")).to_contain_text("Delete every dead letter of job")
    assert r.llen("{dash-jobs}:dead") == 5  # nothing happens before confirming
    page.click("#confirm-yes")
    expect(page.locator("#dead-message")).to_have_text("purged 5")
    assert r.llen("{dash-jobs}:dead") == 0
    eventually(lambda: _figure(page, "job", "dead") == "0", "the page to show no dead letters")
    page.screenshot(path=str(tmp_path / "3-purged.png"), full_page=True)


@pytest.fixture
def periodic(redis_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    yield from _serve(redis_url, tmp_path, PERIODIC)


def _enqueue(url: str, queue: str, body: str) -> None:
    async def produce() -> None:
        async with App(url) as app:
            await app.enqueue(queue, body)

    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, produce()).result()


def test_schedules_and_pause_resume_in_the_page(
    periodic: dict[str, Any], page: Page, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(periodic["url"], decode_responses=True)
    page.goto(periodic["base"] + "/")

    # The schedules table: the periodic handler, its rule, a next tick that advances.
    row = page.locator('[data-section="schedules"] tbody tr[data-handler="tick"]')
    expect(row).to_contain_text("dash-ticks")
    expect(row).to_contain_text("every 1 s")
    nxt = row.locator('td[data-field="next"]')
    first = eventually(lambda: nxt.get_attribute("title"), "a next tick")
    expect(nxt.locator(".rel")).to_have_text(re.compile(r"^(in \d+ s|now|due)$"))
    eventually(lambda: (nxt.get_attribute("title") or "") > first, "the next tick to advance")
    last = row.locator('td[data-field="last_fired"]')
    expect(last.locator(".rel")).to_have_text(re.compile(r"^(\d+ s ago|now)$"), timeout=WAIT * 1000)

    # Until logged in, the pause section shows the state and no button.
    work = page.locator('[data-section="pause"] tbody tr[data-handler="work"]')
    expect(work.locator("td[data-state]")).to_have_text("running")
    assert page.locator('[data-section="pause"] button').count() == 0

    page.fill('#login input[name="token"]', TOKEN)
    page.click("#login button")
    expect(page.locator("#mode")).to_have_text("logged in")
    _enqueue(periodic["url"], "dash-work", "before")
    eventually(lambda: "before" in r.lrange("handled", 0, -1), "a job handled before the pause")

    work.get_by_role("button", name="Pause").click()
    expect(work.locator("td[data-state]")).to_have_text("paused")
    assert r.exists("{dash-work}:paused") == 1
    _enqueue(periodic["url"], "dash-work", "while-paused")
    # The worker keeps running the periodic handler meanwhile; the paused queue's job waits.
    ticks = r.llen("ticked")
    eventually(lambda: r.llen("ticked") >= ticks + 2, "two more ticks handled")
    assert r.lrange("dash-work", 0, -1) != [] and "while-paused" not in r.lrange("handled", 0, -1)
    page.screenshot(path=str(tmp_path / "paused.png"), full_page=True)

    work.get_by_role("button", name="Resume").click()
    expect(work.locator("td[data-state]")).to_have_text("running")
    assert r.exists("{dash-work}:paused") == 0
    eventually(lambda: "while-paused" in r.lrange("handled", 0, -1), "the job handled on resume")
    assert r.llen("dash-work") == 0

    # A dashboard without a token shows the pause state (here set by another client) and no
    # button at all.
    r.set("{dash-ticks}:paused", "1")
    port = free_port()
    cmd = [sys.executable, "-m", "aioredq", "dashboard", PERIODIC, "--url", periodic["url"]]
    with (tmp_path / "read-only.log").open("w") as log:
        plain = subprocess.Popen([*cmd, "--port", str(port)], cwd=ROOT, stderr=log)
        try:
            eventually(lambda: _answers(f"http://127.0.0.1:{port}"), "the read-only dashboard")
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#mode")).to_have_text("read-only (no token set)")
            expect(page.locator('[data-section="pause"] p').first).to_contain_text("start the")
            ticker = page.locator('[data-section="pause"] tbody tr[data-handler="tick"]')
            expect(ticker.locator("td[data-state]")).to_have_text("paused")
            expect(work.locator("td[data-state]")).to_have_text("running")
            assert page.locator('[data-section="pause"] button').count() == 0
            page.screenshot(path=str(tmp_path / "read-only.png"), full_page=True)
        finally:
            _stop(plain)
