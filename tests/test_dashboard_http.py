"""The dashboard's HTTP rules, through httpx against the ASGI app (mounted in FastAPI too)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio
from _waiting import until, until_redis
from fastapi import FastAPI

from aioredq import App, Reject
from aioredq._connection import Connection
from aioredq._dashboard import _sections
from aioredq._dashboard._sections import Section

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "the-token"
HOST = "dash.test"
BASE = f"http://{HOST}"
SAME_ORIGIN = {"Origin": BASE}


def make_app(url: str) -> App:
    app = App(url)

    @app.task("jobs")
    async def job(body: str) -> None: ...

    @app.stream("events", group="g")
    async def event(body: dict[str, str]) -> None: ...

    @app.subscribe("news")
    async def news(body: str) -> None: ...

    return app


def letter(i: int, body: str = "") -> str:
    return json.dumps(
        {
            "id": f"id-{i}",
            "attempts": 3,
            "failed_at": "2026-01-01T00:00:00+00:00",
            "error": f"ValueError: bad {i}",
            "body": body or f"body {i}",
        }
    )


@pytest_asyncio.fixture
async def app(redis_url: str) -> AsyncIterator[App]:
    app = make_app(redis_url)
    try:
        yield app
    finally:
        await app.aclose()


def client(asgi: Any, prefix: str = "") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url=BASE + prefix)


async def login(c: httpx.AsyncClient) -> str:
    """Log in with the form; returns the session's CSRF token."""
    r = await c.post("login", data={"token": TOKEN}, headers=SAME_ORIGIN)
    assert r.status_code == 303, r.text
    assert "HttpOnly" in r.headers["set-cookie"]
    assert "SameSite=Strict" in r.headers["set-cookie"]
    session = (await c.get("api/session")).json()
    assert session["authenticated"] is True
    return str(session["csrf"])


async def test_every_response_has_a_strict_content_security_policy(app: App) -> None:
    async with client(app.dashboard()) as c:
        for path in ("/", "/static/app.js", "/api/session", "/nothing"):
            csp = (await c.get(path)).headers["content-security-policy"]
            assert "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
        page = (await c.get("/")).text
        assert "<script>" not in page and "http" not in page.split("<body>")[1]


async def test_read_only_without_a_token_offers_and_accepts_no_change(
    app: App, redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.lpush("{jobs}:dead", letter(1))
    async with client(app.dashboard()) as c:
        session = (await c.get("/api/session")).json()
        assert session["writable"] is False and session["csrf"] is None
        for path, body in (
            ("/api/purge", {"handler": "job"}),
            ("/api/requeue", {"handler": "job"}),
        ):
            r = await c.post(path, json=body, headers=SAME_ORIGIN)
            assert r.status_code == 403
            assert "read-only" in r.json()["error"]
        assert (await c.post("/login", data={"token": ""}, headers=SAME_ORIGIN)).status_code == 403
        assert (await c.get("/api/dead", params={"handler": "job"})).json()["total"] == 1
    assert await redis_client.llen("{jobs}:dead") == 1


async def test_changes_need_the_token_and_the_csrf_token(
    app: App, redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.lpush("{jobs}:dead", *(letter(i) for i in range(3)))
    purge = {"handler": "job"}
    async with client(app.dashboard(TOKEN)) as c:
        assert (await c.post("/api/purge", json=purge)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await c.post("/api/purge", json=purge, headers=wrong)).status_code == 401
        r = await c.post("/login", data={"token": "nope"}, headers=SAME_ORIGIN)
        assert r.status_code == 401 and "set-cookie" not in r.headers
        assert "Wrong token." in r.text
        csrf = await login(c)
        # The cookie alone is not enough: a cross-site form would carry it.
        r = await c.post("/api/purge", json=purge, headers=SAME_ORIGIN)
        assert r.status_code == 403 and "CSRF" in r.json()["error"]
        r = await c.post("/api/purge", json=purge, headers={**SAME_ORIGIN, "X-CSRF-Token": "x"})
        assert r.status_code == 403
        evil = {"Origin": "http://evil.test", "X-CSRF-Token": csrf}
        assert (await c.post("/api/purge", json=purge, headers=evil)).status_code == 403
        cross = {**SAME_ORIGIN, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
        assert (await c.post("/api/purge", json=purge, headers=cross)).status_code == 403
        assert await redis_client.llen("{jobs}:dead") == 3
        ok = {**SAME_ORIGIN, "X-CSRF-Token": csrf}
        r = await c.post(
            "/api/requeue", json={"handler": "job", "ids": ["id-1", "id-9"]}, headers=ok
        )
        assert r.json() == {"requeued": 1, "skipped": [], "missing": ["id-9"]}
        assert await redis_client.llen("jobs") == 1
        # A script with the bearer token needs no cookie and no CSRF token.
    async with client(app.dashboard(TOKEN)) as c:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        r = await c.post("/api/purge", json=purge, headers=bearer)
        assert r.json() == {"purged": 2}
    assert await redis_client.llen("{jobs}:dead") == 0


async def test_a_session_cookie_from_another_dashboard_process_is_refused(app: App) -> None:
    async with client(app.dashboard(TOKEN)) as c:
        await login(c)
        cookies = c.cookies
    async with client(app.dashboard(TOKEN)) as c:
        c.cookies = cookies
        assert (await c.get("/api/session")).json()["authenticated"] is False


async def test_bad_requests_are_refused_clearly(app: App) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with client(app.dashboard(TOKEN)) as c:
        r = await c.post("/api/purge", content=b"not json", headers=bearer)
        assert r.status_code == 400
        r = await c.post("/api/purge", json={"handler": "nobody"}, headers=bearer)
        assert r.status_code == 404 and "nobody" in r.json()["error"]
        r = await c.post("/api/purge", json={"handler": "news"}, headers=bearer)
        assert r.status_code == 404 and "no dead letters" in r.json()["error"]
        r = await c.post("/api/requeue", json={"handler": "job", "ids": [1]}, headers=bearer)
        assert r.status_code == 400
        r = await c.post("/api/purge", content=b"x" * 100_000, headers=bearer)
        assert r.status_code == 413
        assert (
            await c.get("/api/dead", params={"handler": "job", "start": "-1"})
        ).status_code == 400
        assert (await c.delete("/api/purge", headers=bearer)).status_code == 405


async def test_queue_letters_come_in_pages_newest_first(
    app: App, redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.lpush("{jobs}:dead", *(letter(i) for i in range(45)))
    xss = "<img src=x onerror=alert(1)>"
    await redis_client.lpush("{jobs}:dead", letter(45, xss))
    async with client(app.dashboard()) as c:
        first = (await c.get("/api/dead", params={"handler": "job", "size": 20})).json()
        assert first["total"] == 46 and first["more"] is True
        assert [x["id"] for x in first["letters"][:2]] == ["id-45", "id-44"]
        assert first["letters"][0]["body"] == {"text": xss, "more": 0}
        assert first["letters"][1]["error"]["text"] == "ValueError: bad 44"
        assert first["letters"][1]["attempts"] == 3
        last = await c.get("/api/dead", params={"handler": "job", "size": 20, "start": 40})
        assert [x["id"] for x in last.json()["letters"]] == [f"id-{i}" for i in range(5, -1, -1)]
        assert last.json()["more"] is False


async def test_letters_another_program_wrote_show_as_text(
    app: App, redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.lpush("{jobs}:dead", b"\xff\xfe not json", b"x" * 5000)
    async with client(app.dashboard()) as c:
        page = (await c.get("/api/dead", params={"handler": "job"})).json()
    long, raw = page["letters"]
    assert long["id"] is None and long["body"]["more"] == 5000 + 3 - 2000
    assert raw["body"]["text"] == repr(b"\xff\xfe not json")
    assert raw["error"]["text"] == "(not a JSON letter)"


async def test_stream_letters_come_in_pages_of_the_handlers_group(
    app: App, redis_client: redis.asyncio.Redis
) -> None:
    for i in range(30):
        group = "g" if i % 3 else "other"
        await redis_client.xadd(
            "{events}:dead",
            {
                "group": group,
                "original_id": f"1-{i}",
                "deliveries": "2",
                "error": "E",
                "fields": "{}",
            },
        )
    async with client(app.dashboard()) as c:
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            params = {"handler": "event", "size": "7", **({"cursor": cursor} if cursor else {})}
            page = (await c.get("/api/dead", params=params)).json()
            seen += [x["original_id"] for x in page["letters"]]
            cursor = page["cursor"]
            if not page["more"]:
                break
        assert seen == [f"1-{i}" for i in range(29, -1, -1) if i % 3]


async def test_one_sampler_serves_every_open_page(app: App) -> None:
    dashboard = app.dashboard(interval=60)
    async with client(dashboard) as c:
        pages = await asyncio.gather(*(c.get("/api/figures") for _ in range(50)))
        assert {p.status_code for p in pages} == {200}
        assert len(dashboard.sampler.ring) == 1  # one read of Redis for the fifty pages
        rows = pages[0].json()["handlers"]
        assert [r["name"] for r in rows] == ["job", "event", "news"]
        later = (await c.get("/api/figures", params={"since": pages[0].json()["at"]})).json()
        assert later["samples"] == []


async def test_mounted_in_fastapi_under_a_prefix(
    app: App, redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.lpush("jobs", b"waiting")
    api = FastAPI()
    api.mount("/aioredq", app.dashboard(TOKEN))
    async with client(api) as c:
        r = await c.get("/aioredq")
        assert r.status_code == 307 and r.headers["location"].endswith("/aioredq/")
        page = (await c.get("/aioredq/")).text
        assert 'src="static/app.js"' in page
        assert (await c.get("/aioredq/static/app.js")).status_code == 200
        figures = (await c.get("/aioredq/api/figures")).json()
        assert figures["handlers"][0]["length"] == 1
        r = await c.post("/aioredq/login", data={"token": TOKEN}, headers=SAME_ORIGIN)
        assert r.headers["location"] == "/aioredq/"
        assert "Path=/aioredq/" in r.headers["set-cookie"]


def test_an_empty_token_is_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="token"):
        make_app(redis_url).dashboard("")


def test_the_command_without_uvicorn_is_one_line_and_exit_2(redis_url: str) -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; from aioredq._cli import main; "
        f"main(['dashboard', 'tests.apps.dashboard_app:app', '--url', {redis_url!r}])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "aioredq: error: the dashboard needs uvicorn: pip install 'aioredq[dashboard]'"
    ]


async def test_a_feature_section_shows_only_when_the_app_has_it(
    app: App, monkeypatch: pytest.MonkeyPatch, redis_client: redis.asyncio.Redis
) -> None:
    # A section gets the app's Connection (never a raw client); the test reads through its own.
    async def read(app: App, conn: Connection) -> Any:
        assert conn is app.connection
        return {"flag": await redis_client.get("flag")}

    async def flip(app: App, conn: Connection, data: dict[str, Any]) -> Any:
        assert conn is app.connection
        return {"set": await redis_client.set("flag", str(data["to"]))}

    has = {"feature": True}
    section = Section("demo", "Demo", lambda a: has["feature"], read, {"flip": flip})
    monkeypatch.setattr(_sections, "SECTIONS", [section])
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with client(app.dashboard(TOKEN)) as c:
        assert (await c.get("/api/session")).json()["sections"] == [
            {"name": "demo", "title": "Demo"}
        ]
        assert (await c.get("/api/section/demo")).json() == {"flag": None}
        r = await c.post("/api/section/demo/flip", json={"to": 1}, headers=SAME_ORIGIN)
        assert r.status_code == 401
        r = await c.post("/api/section/demo/flip", json={"to": 1}, headers=bearer)
        assert r.json() == {"set": True}
        assert await redis_client.get("flag") == b"1"
        assert (await c.post("/api/section/demo/nope", json={}, headers=bearer)).status_code == 404
        has["feature"] = False
        assert (await c.get("/api/session")).json()["sections"] == []
        assert (await c.get("/api/section/demo")).status_code == 404


async def test_pages_share_a_sections_read_until_an_action_changes_it(
    app: App, monkeypatch: pytest.MonkeyPatch, redis_client: redis.asyncio.Redis
) -> None:
    reads = []

    async def read(app: App, conn: Any) -> Any:
        reads.append(1)
        return {"flag": await redis_client.exists("flag")}

    async def flip(app: App, conn: Any, data: dict[str, Any]) -> Any:
        return {"set": await redis_client.set("flag", "on")}

    section = Section("demo", "Demo", lambda a: True, read, {"flip": flip})
    monkeypatch.setattr(_sections, "SECTIONS", [section])
    async with client(app.dashboard(TOKEN)) as c:
        # Many pages refreshing at once: one read of Redis between them.
        answers = await asyncio.gather(*(c.get("/api/section/demo") for _ in range(20)))
        assert {r.json()["flag"] for r in answers} == {0}
        assert 1 <= len(reads) < 20
        seen = len(reads)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        await c.post("/api/section/demo/flip", json={}, headers=bearer)
        # After an action the next read is fresh, not the shared answer.
        assert (await c.get("/api/section/demo")).json() == {"flag": 1}
        assert len(reads) == seen + 1


async def test_a_streams_dead_letter_is_requeued_by_its_id_and_handled(redis_url: str) -> None:
    app = App(redis_url)
    failing, handled = True, []

    @app.stream("orders", group="billing", start="earliest")
    async def bill(body: dict[str, str]) -> None:
        if failing:
            raise Reject("not yet")
        handled.append(body["n"])

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with app, client(app.dashboard(TOKEN)) as c:
        await app.append("orders", {"n": "1"})
        await app.append("orders", {"n": "2"})
        letters = lambda: c.get("/api/dead", params={"handler": "bill"})  # noqa: E731

        async def dead_count() -> int:
            return len((await letters()).json()["letters"])

        await until_redis(dead_count, 2, "two dead letters")
        newest = (await letters()).json()["letters"][0]
        assert newest["error"]["text"].startswith("Reject: not yet")
        failing = False
        r = await c.post(
            "/api/requeue", json={"handler": "bill", "ids": [newest["id"]]}, headers=bearer
        )
        assert r.json() == {"requeued": 1, "skipped": [], "missing": []}
        await until(lambda: handled == ["2"], "the requeued letter handled")
        assert await dead_count() == 1


async def test_the_schema_document_is_a_section(app: App) -> None:
    async with client(app.dashboard()) as c:
        sections = (await c.get("/api/session")).json()["sections"]
        assert {"name": "schema", "title": "AsyncAPI document"} in sections
        doc = (await c.get("/api/section/schema")).json()
    assert doc["asyncapi"] == "3.0.0"
    assert {op["x-aioredq"]["handler"] for op in doc["operations"].values()} == {
        h.name for h in app.handlers
    }


async def test_pause_resume_and_schedules_are_sections_behind_the_token(
    redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    app = make_app(redis_url)

    @app.task("ticks", every=60)
    async def tick(at: Any) -> None: ...

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with client(app.dashboard(TOKEN)) as c:
            names = {s["name"] for s in (await c.get("/api/session")).json()["sections"]}
            assert {"pause", "schedules"} <= names
            rows = (await c.get("/api/section/pause")).json()["handlers"]
            assert {r["name"]: r["paused"] for r in rows} == {
                "job": False,
                "event": False,
                "tick": False,
            }
            r = await c.post("/api/section/pause/pause", json={"name": "job"}, headers=SAME_ORIGIN)
            assert r.status_code == 401 and not await redis_client.exists("{jobs}:paused")
            r = await c.post("/api/section/pause/pause", json={"name": "job"}, headers=bearer)
            assert r.json() == {"name": "job", "paused": True}
            assert await redis_client.exists("{jobs}:paused")
            r = await c.post("/api/section/pause/pause", json={"name": "news"}, headers=bearer)
            assert "pub/sub" in r.json()["error"]
            r = await c.post("/api/section/pause/resume", json={"name": "job"}, headers=bearer)
            assert not await redis_client.exists("{jobs}:paused")
            (row,) = (await c.get("/api/section/schedules")).json()["schedules"]
            assert row["name"] == "tick" and row["schedule"] == "every 60 s"
            assert row["last_fired"] is None and row["next"]
    finally:
        await app.aclose()
