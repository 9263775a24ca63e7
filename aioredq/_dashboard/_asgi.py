"""The dashboard as a plain ASGI app: no web framework, so it mounts under FastAPI, Starlette
or any ASGI server without adding a dependency.

Security: with no token it is read-only (no changing route is accepted). With a token, a
change needs ``Authorization: Bearer <token>`` or the session cookie the login form sets
(HttpOnly, SameSite=Strict); a cookie-authenticated POST also needs the session's CSRF token in
``X-CSRF-Token``, and any POST whose Origin is not this host is refused. Tokens are compared in
constant time. Every response carries a Content-Security-Policy without inline scripts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._app import App
from .._connection import translated
from .._exceptions import AioredqError
from . import _letters, _sections
from ._sampler import Sampler

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

COOKIE = "aioredq_dashboard"
MAX_BODY = 64 * 1024
# A section's answer is shared by every page for this long: pages refresh the schedules every
# few seconds, and 50 of them then cost Redis what one does.
SECTION_TTL = 1.0
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
WRONG_TOKEN = (
    b'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>aioredq dashboard</title>'
    b'<link rel="stylesheet" href="static/app.css"></head><body><main><section><p class="error">'
    b'Wrong token.</p><p><a href="./">Back to the dashboard</a></p></section></main></body></html>'
)
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "sections.js": "text/javascript; charset=utf-8",
}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _asset(name: str) -> bytes:
    return resources.files("aioredq._dashboard").joinpath("static", name).read_bytes()


class Dashboard:
    """``app.dashboard()``: the ASGI app of the dashboard page."""

    def __init__(self, app: App, *, token: str | None = None, interval: float = 1.0) -> None:
        if token is not None and not token:
            raise ValueError("token must be a non-empty string, or None for read-only")
        self.app = app
        self.token = token
        self.sampler = Sampler(app, interval)
        # Signs session cookies; a new one per process, so a restart logs every page out.
        self._secret = secrets.token_bytes(32)
        self._read: dict[str, tuple[float, asyncio.Future[Any]]] = {}

    # ASGI entry point -------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        path = scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :]
        try:
            await self._route(scope, receive, send, path or "", root)
        except _Refused as exc:
            await self._json(send, {"error": str(exc)}, exc.status)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.sampler.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(
        self, scope: Scope, receive: Receive, send: Send, path: str, root: str
    ) -> None:
        method = scope["method"]
        if path == "":  # relative URLs need the trailing slash
            await self._send(send, 307, b"", "text/plain", [(b"location", f"{root}/".encode())])
            return
        if method in ("GET", "HEAD"):
            await self._read_route(scope, send, path)
            return
        if method != "POST":
            raise _Refused(405, "method not allowed")
        self._check_origin(scope)
        body = await self._body(receive)
        if path == "/login":
            await self._login(scope, send, body, root)
            return
        if path == "/logout":
            cookie = f"{COOKIE}=; Path={root}/; Max-Age=0; HttpOnly; SameSite=Strict"
            await self._send(send, 303, b"", "text/plain", self._after_form(root, cookie))
            return
        self._authorise(scope)
        try:
            data = json.loads(body or b"{}")
            assert isinstance(data, dict)
        except (ValueError, AssertionError):
            raise _Refused(400, "expected a JSON object") from None
        conn = self.app.connection
        if path.startswith("/api/section/"):
            feature, _, verb = path[13:].partition("/")
            action = self._section(feature).actions.get(verb)
            if action is None:
                raise _Refused(404, "not found")
            self._read.clear()  # the page reads the section again to show what changed
            await self._json(send, await self._redis(lambda: action(self.app, conn, data)))
            return
        await self._json(send, await self._dead_action(path, data))

    async def _read_route(self, scope: Scope, send: Send, path: str) -> None:
        if path == "/":
            await self._send(send, 200, _asset("index.html"), "text/html; charset=utf-8")
        elif path.startswith("/static/") and path[8:] in STATIC:
            await self._send(send, 200, _asset(path[8:]), STATIC[path[8:]])
        elif path == "/api/session":
            await self._json(send, self._session(scope))
        elif path == "/api/figures":
            await self._json(send, await self._figures(scope))
        elif path == "/api/dead":
            await self._json(send, await self._dead_page(scope))
        elif path.startswith("/api/section/"):
            await self._json(send, await self._section_read(self._section(path[13:])))
        else:
            raise _Refused(404, "not found")

    async def _dead_action(self, path: str, data: dict[str, Any]) -> Any:
        """A requeue or purge of a handler's dead letters."""
        conn = self.app.connection
        name = data.get("handler")
        if not isinstance(name, str):
            raise _Refused(400, "'handler' must be a handler's name")
        if path == "/api/requeue":
            ids = data.get("ids")
            if ids is not None and not (
                isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            ):
                raise _Refused(400, "'ids' must be a list of dead letter ids, or absent for all")
            result = await self._redis(lambda: _letters.requeue(conn, self.app, name, ids))
        elif path == "/api/purge":
            result = await self._redis(lambda: _letters.purge(conn, self.app, name))
        else:
            raise _Refused(404, "not found")
        return result

    # reading ------------------------------------------------------------------------------
    def _section(self, name: str) -> _sections.Section:
        section = _sections.find(self.app, name)
        if section is None:
            raise _Refused(404, "not found")
        return section

    async def _section_read(self, section: _sections.Section) -> Any:
        """The section's answer, one read of Redis shared by the pages that ask within a
        second of each other (those asking while it runs wait for the same read)."""
        now = time.monotonic()
        kept = self._read.get(section.name)
        if kept is None or now - kept[0] >= SECTION_TTL:
            conn = self.app.connection
            task = asyncio.ensure_future(self._redis(lambda: section.read(self.app, conn)))
            kept = self._read[section.name] = (now, task)
        try:
            # Shielded: a page that goes away does not cancel the read the others wait for.
            return await asyncio.shield(kept[1])
        except _Refused:
            if self._read.get(section.name) is kept:
                del self._read[section.name]  # a failure is not kept: the next page retries
            raise

    async def _figures(self, scope: Scope) -> dict[str, Any]:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            since = float(query.get("since", ["0"])[0])
        except ValueError:
            raise _Refused(400, "'since' must be a number") from None
        s = self.sampler
        await s.snapshot()
        return {
            "at": s.at,
            "interval": s.interval,
            "error": s.error,
            "handlers": s.rows,
            "lag_warning": s.thresholds,
            "samples": s.since(since),
        }

    async def _dead_page(self, scope: Scope) -> dict[str, Any]:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name = query.get("handler", [""])[0]
        try:
            start = int(query.get("start", ["0"])[0])
            size = int(query.get("size", [str(_letters.PAGE_SIZE)])[0])
        except ValueError:
            raise _Refused(400, "'start' and 'size' must be whole numbers") from None
        if start < 0:
            raise _Refused(400, "'start' must be >= 0")
        cursor = query.get("cursor", [None])[0] or None
        conn = self.app.connection
        page: dict[str, Any] = await self._redis(
            lambda: _letters.page(conn, self.app, name, start=start, cursor=cursor, size=size)
        )
        return page

    async def _redis(self, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await translated("dashboard", call)
        except _letters.NotFound as exc:
            raise _Refused(404, str(exc)) from None
        except AioredqError as exc:
            raise _Refused(502, str(exc)) from None

    # security -----------------------------------------------------------------------------
    def _sign(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def _session_id(self, scope: Scope) -> str | None:
        """The session id of a valid login cookie, or None."""
        for name, value in scope.get("headers", []):
            if name != b"cookie":
                continue
            text: str = value.decode("latin-1")
            for part in text.split(";"):
                key, _, cookie = part.strip().partition("=")
                sid, _, mac = cookie.partition(".")
                good = self._sign("s" + sid).encode()
                if key == COOKIE and sid and hmac.compare_digest(mac.encode("latin-1"), good):
                    return sid
        return None

    def _bearer(self, scope: Scope) -> bool:
        header = _header(scope, b"authorization")
        if self.token is None or header is None or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode("latin-1"), self.token.encode())

    def _session(self, scope: Scope) -> dict[str, Any]:
        sid = self._session_id(scope) if self.token is not None else None
        return {
            "writable": self.token is not None,
            "authenticated": sid is not None or self._bearer(scope),
            # Readable only by same-origin script (no CORS): a cross-site page cannot learn it.
            "csrf": None if sid is None else self._sign("c" + sid),
            "url": self.app.target.safe_url,
            "sections": [{"name": x.name, "title": x.title} for x in _sections.available(self.app)],
        }

    def _authorise(self, scope: Scope) -> None:
        if self.token is None:
            raise _Refused(403, "read-only dashboard: start it with a token to change anything")
        if self._bearer(scope):
            return  # a browser never adds this header by itself: no CSRF through it
        sid = self._session_id(scope)
        if sid is None:
            raise _Refused(401, "log in with the dashboard's token first")
        csrf = _header(scope, b"x-csrf-token") or ""
        if not hmac.compare_digest(csrf.encode("latin-1"), self._sign("c" + sid).encode()):
            raise _Refused(403, "missing or wrong CSRF token")

    def _check_origin(self, scope: Scope) -> None:
        if _header(scope, b"sec-fetch-site") == "cross-site":
            raise _Refused(403, "cross-site request refused")
        origin = _header(scope, b"origin")
        if origin is None or (origin == "null" and self._bearer(scope)):
            return  # not from a browser page (a script with the bearer token)
        host = _header(scope, b"host")
        if host is None or urlsplit(origin).netloc != host:
            raise _Refused(403, "request from another origin refused")

    async def _login(self, scope: Scope, send: Send, body: bytes, root: str) -> None:
        if self.token is None:
            raise _Refused(403, "read-only dashboard: there is nothing to log in to")
        given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode()):
            # The login form's answer is a page, not JSON: a person reads it.
            await self._send(send, 401, WRONG_TOKEN, "text/html; charset=utf-8")
            return
        sid = secrets.token_urlsafe(18)
        cookie = f"{COOKIE}={sid}.{self._sign('s' + sid)}; Path={root}/; HttpOnly; SameSite=Strict"
        if scope.get("scheme") == "https":
            cookie += "; Secure"
        await self._send(send, 303, b"", "text/plain", self._after_form(root, cookie))

    @staticmethod
    def _after_form(root: str, cookie: str) -> list[tuple[bytes, bytes]]:
        return [(b"location", f"{root}/".encode()), (b"set-cookie", cookie.encode("latin-1"))]

    # plumbing -----------------------------------------------------------------------------
    async def _body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise _Refused(413, "request body too large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _json(self, send: Send, data: Any, status: int = 200) -> None:
        await self._send(send, status, json.dumps(data).encode(), "application/json")

    async def _send(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"content-security-policy", CSP.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"DENY"),
            (b"cache-control", b"no-store"),
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None
