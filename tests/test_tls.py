"""TLS against a real TLS-only redis-server whose CA the test makes: ``ssl_*`` URL parameters on
every scheme, ``App(ssl=SSLContext)``, mutual TLS, and clear errors for bad TLS settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from _servers import (
    LocalCluster,
    RedisServer,
    SentinelServer,
    TLSFiles,
    TLSRedisServer,
    call,
    free_port,
    make_tls_files,
)
from _waiting import until

from aioredq import App, ConfigurationError, ConnectError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def tls_files() -> Iterator[TLSFiles]:
    directory = Path(tempfile.mkdtemp(prefix="aioredq-tls-"))
    try:
        yield make_tls_files(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_server(tls_files: TLSFiles) -> Iterator[TLSRedisServer]:
    with TLSRedisServer(tls_files) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tls_files: TLSFiles) -> Iterator[TLSRedisServer]:
    """Requires a client certificate signed by the test CA."""
    with TLSRedisServer(tls_files, client_certs=True) as server:
        yield server


@pytest.fixture(autouse=True)
def _empty(request: pytest.FixtureRequest) -> None:
    for name in ("tls_server", "mtls_server"):
        if name in request.fixturenames:
            server: TLSRedisServer = request.getfixturevalue(name)
            server.tls_call("FLUSHALL")


async def run_every_model(app: App) -> None:
    """A task, a stream entry and a published message each reach their handler."""
    seen: dict[str, object] = {}

    @app.task("jobs", lease=1.0)
    async def job(text: str) -> None:
        seen["task"] = text

    @app.stream("events", group="g", lease=1.0, start="earliest")
    async def event(entry: dict[str, str]) -> None:
        seen["stream"] = entry

    @app.subscribe("notice")
    async def notice(text: str) -> None:
        seen["subscribe"] = text

    async with app:
        await app.enqueue("jobs", "hello")
        await app.append("events", {"n": "1"})
        assert await app.publish("notice", "hi") == 1  # subscribed once start() returned
        await until(lambda: len(seen) == 3, "every model's message to be handled")
    assert seen == {"task": "hello", "stream": {"n": "1"}, "subscribe": "hi"}


async def test_every_model_over_tls_with_the_ca_in_the_url(tls_server: TLSRedisServer) -> None:
    await run_every_model(App(tls_server.url, connect_timeout=5))


async def test_every_model_over_mutual_tls_with_url_parameters(
    mtls_server: TLSRedisServer, tls_files: TLSFiles
) -> None:
    url = (
        f"rediss://127.0.0.1:{mtls_server.port}/0?ssl_ca_certs={quote(str(tls_files.ca))}"
        f"&ssl_certfile={tls_files.client_cert}&ssl_keyfile={tls_files.client_key}"
        "&ssl_cert_reqs=required"
    )
    await run_every_model(App(url, connect_timeout=5))


async def test_every_model_over_mutual_tls_with_an_ssl_context(
    mtls_server: TLSRedisServer, tls_files: TLSFiles
) -> None:
    app = App(f"rediss://127.0.0.1:{mtls_server.port}/0", ssl=tls_files.client_context())
    await run_every_model(app)


async def test_ssl_context_turns_tls_on_for_a_redis_url(
    tls_server: TLSRedisServer, tls_files: TLSFiles
) -> None:
    app = App(f"redis://127.0.0.1:{tls_server.port}/0", ssl=tls_files.client_context())
    await app.enqueue("jobs", "x")
    assert tls_server.tls_call("LLEN", "jobs") == 1
    await app.aclose()


async def test_mutual_tls_without_a_client_certificate_is_refused(
    mtls_server: TLSRedisServer, tls_files: TLSFiles
) -> None:
    app = App(
        f"rediss://:s3cret-pw@127.0.0.1:{mtls_server.port}/0?ssl_ca_certs={tls_files.ca}",
        connect_timeout=0,
    )
    with pytest.raises(ConnectError) as caught:
        await app.connect()
    await app.aclose()
    assert f"127.0.0.1:{mtls_server.port}" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_server: TLSRedisServer,
) -> None:
    app = App(f"rediss://127.0.0.1:{tls_server.port}/0", connect_timeout=0)
    with pytest.raises(ConnectError, match="certificate verify failed"):
        await app.connect()
    await app.aclose()


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("ssl_cert_reqs=bogus", "ssl_cert_reqs"),
        ("ssl_check_hostname=maybe", "ssl_check_hostname"),
        ("ssl_ca_certs=/nonexistent/ca.crt", "ssl_ca_certs"),
        ("ssl_keyfile=/nonexistent/client.key", "ssl_keyfile"),
    ],
)
async def test_a_bad_tls_value_is_a_configuration_error_naming_it(query: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        app = App(f"rediss+sentinel://127.0.0.1:1/mymaster?{query}", connect_timeout=0)
        await app.connect()  # missing files are found when the first client is made


def test_tls_parameters_need_a_tls_scheme() -> None:
    with pytest.raises(ConfigurationError, match="ssl_ca_certs needs a TLS URL"):
        App("redis://127.0.0.1:1/0?ssl_ca_certs=/x")


def test_cli_bad_tls_value_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "tlsapp.py").write_text("from aioredq import App\napp = App()\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aioredq",
            "tlsapp:app",
            "--url",
            "rediss://:pw-in-url@127.0.0.1:1/0?ssl_cert_reqs=bogus",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "ssl_cert_reqs" in done.stderr
    assert "pw-in-url" not in done.stderr


async def test_every_model_through_sentinels_over_tls(
    tls_server: TLSRedisServer, tls_files: TLSFiles
) -> None:
    sentinel = SentinelServer(tls_server.port, tls=tls_files)
    try:

        def sees_its_master() -> bool:
            reply = sentinel.call("SENTINEL", "MASTER", "mymaster")
            assert isinstance(reply, list)
            fields = dict(zip(reply[::2], reply[1::2], strict=True))
            flags = fields.get(b"flags", b"s_down")
            return isinstance(flags, bytes) and b"s_down" not in flags

        sentinel.wait_until(sees_its_master, "view of its TLS master")
        url = f"rediss+sentinel://127.0.0.1:{sentinel.port}/mymaster?ssl_ca_certs={tls_files.ca}"
        await run_every_model(App(url, connect_timeout=10))
    finally:
        sentinel.close()


class TLSClusterNode(RedisServer):
    """A cluster node with a plain port (for the suite's health checks and ``redis-cli
    --cluster create``) and a TLS port, its cluster bus over TLS; a TLS client is told the
    TLS ports of the other nodes."""

    def __init__(self, files: TLSFiles, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.files = files
        self.tls_port = free_port()
        self.bus_port = free_port()  # else derived from the TLS port, maybe past 65535

    def _argv(self) -> list[str]:
        f = self.files
        return [
            *super()._argv(),
            *("--tls-port", str(self.tls_port), "--tls-cluster", "yes"),
            *("--cluster-port", str(self.bus_port)),
            *("--tls-cert-file", str(f.server_cert), "--tls-key-file", str(f.server_key)),
            *("--tls-ca-cert-file", str(f.ca), "--tls-auth-clients", "no"),
        ]


def start_tls_cluster(files: TLSFiles) -> list[TLSClusterNode]:
    """Three TLS masters joined by hand (``redis-cli --cluster create`` would meet them on
    bus ports derived from the plain ones)."""
    nodes = [TLSClusterNode(files, cluster_node_timeout=2000) for _ in range(3)]
    cluster = LocalCluster(masters=3)
    cluster.nodes = list(nodes)
    try:
        for node in nodes:
            node.start()
        bounds = [0, 5461, 10923, 16384]
        for i, node in enumerate(nodes):
            call(node.port, "CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        for node in nodes[1:]:
            call(nodes[0].port, "CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        cluster.wait_stable(30)
    except BaseException:
        cluster.close()
        raise
    return nodes


@pytest.mark.cluster
async def test_every_model_on_a_cluster_over_tls(tls_files: TLSFiles) -> None:
    nodes = start_tls_cluster(tls_files)
    try:
        seeds = ",".join(f"127.0.0.1:{n.tls_port}" for n in nodes[:2])
        await run_every_model(App(f"rediss+cluster://{seeds}?ssl_ca_certs={tls_files.ca}"))
        app = App(
            f"rediss+cluster://127.0.0.1:{nodes[2].tls_port}",
            ssl=tls_files.client_context(with_cert=False),
        )
        names = [f"q{i}" for i in range(12)]  # on every master
        for name in names:
            await app.enqueue(name, "x")
        await app.aclose()
        counts = [call(n.port, "DBSIZE") for n in nodes]
        assert all(isinstance(c, int) and c > 0 for c in counts), counts
    finally:
        for node in nodes:
            node.close()
