"""A password is never printed, whatever the URL's shape: user info, query parameters, several
hosts, sentinel and cluster schemes; in reprs, parse errors, connect errors (their whole chain),
the CLI's log lines, ``inspect`` and the metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from _servers import RedisServer, ServerFactory, call, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioredq import App
from aioredq._url import parse_url, redact

MARK = "Zq"  # every generated secret starts and ends with it; nothing else in a URL has it
SCHEMES = [
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
]
secret_text = st.text(
    alphabet=st.sampled_from("abcXYZ019 @:/?#%&=+;,[]{}!$'\"\\é€"), min_size=0, max_size=12
).map(lambda t: f"{MARK}{t}{MARK}")
user_text = st.text(alphabet=st.sampled_from("abc019-_.@:/%"), max_size=8)


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A URL carrying one or more secrets, and those secrets (decoded)."""
    scheme = draw(st.sampled_from(SCHEMES))
    secrets: list[str] = []
    user_info = ""
    where = draw(st.sampled_from(["user info", "query", "both", "encoded name"]))
    if where in ("user info", "both"):
        password = draw(secret_text)
        secrets.append(password)
        user = draw(user_text)
        user_info = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    query: list[str] = []
    if where in ("query", "both"):
        password = draw(secret_text)
        secrets.append(password)
        query.append(f"password={quote(password, safe='')}")
    if where == "encoded name":  # pass%77ord= is password= once decoded
        password = draw(secret_text)
        secrets.append(password)
        query.append(f"pass%77ord={quote(password, safe='')}")
    if scheme.endswith("sentinel") and draw(st.booleans()):
        password = draw(secret_text)
        secrets.append(password)
        query.append(f"sentinel_password={quote(password, safe='')}")
    if scheme.startswith("rediss") and draw(st.booleans()):
        query.append("ssl_cert_reqs=" + draw(st.sampled_from(["required", "none", "bogus"])))
    if draw(st.booleans()):
        query.append("client_name=worker")
    port = PORT
    if scheme == "unix":
        host, path = "", "/tmp/aioredq-no-such.sock"
    else:
        several = scheme.endswith(("cluster", "sentinel"))
        count = draw(st.integers(1, 3 if several else 1))
        names = draw(st.lists(st.sampled_from(["127.0.0.1", "localhost", "[::1]"]), min_size=1))
        host = ",".join(f"{names[i % len(names)]}:{port}" for i in range(count))
        path = "/mymaster/0" if scheme.endswith("sentinel") else "/0"
        if scheme.endswith("cluster"):
            path = ""
    draw(st.randoms()).shuffle(query)
    tail = f"?{'&'.join(query)}" if query else ""
    return f"{scheme}://{user_info}{host}{path}{tail}", secrets


PORT = free_port()  # nothing listens there: every connect is refused at once


def assert_hidden(text: str, secrets: list[str]) -> None:
    assert MARK not in text, text
    for secret in secrets:
        for form in (secret, quote(secret, safe=""), quote(secret)):
            assert form not in text, text


def everything_printed(url: str, *, connect: bool = True) -> str:
    """Every text aioredq shows about ``url``: reprs, the safe URL, errors with their chain
    (with ``connect``, also the error of connecting to it: nothing listens there)."""
    shown = [redact(url)]
    try:
        target = parse_url(url)
        app = App(url, connect_timeout=0)
    except Exception as exc:
        return "\n".join([*shown, *traceback.format_exception(exc)])
    shown += [repr(target), str(target), target.safe_url, repr(app), str(app)]

    async def connect_to_it() -> None:
        try:
            await app.connect()
        except Exception as exc:
            shown.extend(traceback.format_exception(exc))
        finally:
            await app.aclose()

    if connect:
        asyncio.run(connect_to_it())
    return "\n".join(shown)


@settings(max_examples=300, deadline=None)
@given(urls())
def test_no_password_in_reprs_safe_urls_or_parse_errors(case: tuple[str, list[str]]) -> None:
    url, secrets = case
    assert_hidden(everything_printed(url, connect=False), secrets)


# Each connect attempt waits out redis-py's short retry back-off, so fewer examples here.
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(urls())
def test_no_password_in_connect_errors_and_their_chain(case: tuple[str, list[str]]) -> None:
    url, secrets = case
    assert_hidden(everything_printed(url), secrets)


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:p@ss:w/rd@host/0",  # unencoded specials: hidden, and a clear error
        "redis://u:pa?ss@host/0",
        "redis://u:pa#ss@host/0",
        "redis://host/0?client_name=a@b&password=s3",
        "redis://host:abc/0?password=s3",
        "redis://host/0?db=1&s3",  # a bare word in the query: maybe a misplaced password
    ],
)
def test_unencoded_specials_are_over_redacted_rather_than_leaked(url: str) -> None:
    text = everything_printed(url)
    for piece in ("p@ss", "ss:w", "w/rd", "pa?ss", "pa#ss", "s3"):
        if piece in url:
            assert piece not in text


def test_safe_url_keeps_what_helps_an_operator() -> None:
    assert (
        redact("rediss://alice:pw@10.0.0.5:6380/2?ssl_ca_certs=/ca.pem&password=x&db=2")
        == "rediss://alice:***@10.0.0.5:6380/2?ssl_ca_certs=/ca.pem&password=***&db=2"
    )
    assert redact("redis+sentinel://:pw@a:1,b:2/m") == "redis+sentinel://:***@a:1,b:2/m"
    assert redact("redis://localhost:6379/0") == "redis://localhost:6379/0"


SECRET = f"{MARK}-s3cret:@/?#-{MARK}"
APP_MODULE = """
from aioredq import App
app = App()

@app.task("jobs")
async def job(text: str) -> None:
    pass

@app.stream("events", group="g")
async def event(entry: dict) -> None:
    pass
"""


def test_cli_run_metrics_and_inspect_never_show_the_password(
    redis_server_factory: ServerFactory, tmp_path: Path
) -> None:
    server: RedisServer = redis_server_factory()
    call(server.port, "CONFIG", "SET", "requirepass", SECRET)
    (tmp_path / "secretapp.py").write_text(APP_MODULE)
    env = {**os.environ, "AIOREDQ_URL": ""}
    urls = [
        f"redis://:{quote(SECRET, safe='')}@127.0.0.1:{server.port}/0",
        f"redis://127.0.0.1:{server.port}/0?password={quote(SECRET, safe='')}",
    ]
    for url in urls:
        metrics_port = free_port()
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aioredq",
                "secretapp:app",
                "--url",
                url,
                "--metrics-port",
                str(metrics_port),
                "--log-level",
                "DEBUG",
            ],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            metrics = ""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "aioredq_length" not in metrics:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
                    ) as reply:
                        metrics = reply.read().decode()
                except OSError:
                    time.sleep(0.1)
            assert "aioredq_length" in metrics
            inspect = subprocess.run(
                [sys.executable, "-m", "aioredq", "inspect", "secretapp:app", "--url", url],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert inspect.returncode == 0, inspect.stderr
            watch = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aioredq",
                    "inspect",
                    "secretapp:app",
                    "--url",
                    url,
                    "--watch",
                    "--interval",
                    "0.2",
                ],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert watch.stdout is not None
            title = watch.stdout.readline() + watch.stdout.readline()
            watch.send_signal(signal.SIGTERM)
            watched, watch_err = watch.communicate(timeout=30)
            assert "aioredq inspect" in title
        finally:
            worker.send_signal(signal.SIGTERM)
            _, log = worker.communicate(timeout=60)
        assert "starting redis://" in log  # the line that names the URL
        for text in (metrics, inspect.stdout, inspect.stderr, title, watched, watch_err, log):
            assert_hidden(text, [SECRET])
        assert "***" in log and "***" in title
