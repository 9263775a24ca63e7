"""Throwaway Redis servers and clusters for the test suite.

Every process here is a child started by this module with ``--daemonize no``, so it is stopped
by the pid we own and never by name. Nothing in this module touches a server it did not start.
Health checks speak RESP over a plain socket: redis-py's default retry policy would turn each
"is it up yet?" probe against a dead port into seconds of backoff.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, Self, TypeAlias

__all__ = [
    "ClusterFactory",
    "ExternalRedis",
    "LocalCluster",
    "RedisReplyError",
    "RedisServer",
    "SentinelServer",
    "ServerFactory",
    "TLSFiles",
    "TLSRedisServer",
    "free_cluster_port",
    "free_port",
    "make_tls_files",
]

HOST = "127.0.0.1"
CLUSTER_BUS_OFFSET = 10000
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

Reply: TypeAlias = "str | int | bytes | list[Reply] | None"


class RedisReplyError(Exception):
    """The server answered with a RESP error (``-ERR ...``, ``-LOADING ...``)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_cluster_port(attempts: int = 200) -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    for _ in range(attempts):
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if bus <= 65535 and _port_is_free(bus):
            return port
    raise RuntimeError(
        f"no free port P with P+{CLUSTER_BUS_OFFSET} also free after {attempts} tries"
    )


def _find_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} not found on PATH: install Redis 7+ (e.g. apt-get install redis-server)"
            " or set AIOREDQ_TEST_URL"
        )
    return path


def _read_reply(stream: BinaryIO) -> Reply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by server")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisReplyError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else stream.read(size + 2)[:-2]
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_read_reply(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected RESP reply: {line!r}")


def call(
    port: int, *args: str | int, timeout: float = 2.0, tls: ssl.SSLContext | None = None
) -> Reply:
    """Send one command to 127.0.0.1:port on a fresh connection (over TLS with ``tls``) and
    return the decoded reply."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        sock = raw if tls is None else tls.wrap_socket(raw, server_hostname=HOST)
        with sock, sock.makefile("rb") as stream:
            sock.sendall(b"".join(parts))
            return _read_reply(stream)


def _info(port: int, section: str) -> dict[str, str]:
    reply = call(port, "CLUSTER", "INFO") if section == "cluster" else call(port, "INFO", section)
    assert isinstance(reply, bytes)
    fields = (line.split(":", 1) for line in reply.decode().splitlines() if ":" in line)
    return {key: value for key, value in fields}


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1, in a temp dir this object owns.

    ``stop()``/``kill()`` keep the dir and port, so ``start()``/``restart()`` bring the same
    server back (reloading the AOF when ``appendonly=True``). ``close()`` also removes the dir.
    """

    managed = True

    def __init__(
        self,
        *,
        appendonly: bool = False,
        extra_args: list[str] | None = None,
        port: int | None = None,
        cluster_node_timeout: int | None = None,
    ) -> None:
        """``cluster_node_timeout`` (ms) makes this a cluster-enabled node."""
        self._binary = _find_binary("redis-server")
        self.appendonly = appendonly
        self.extra_args = list(extra_args or [])
        self.cluster_node_timeout = cluster_node_timeout
        self._port = port
        self._auto_port = port is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log_offset = 0
        self.dir = Path(tempfile.mkdtemp(prefix="aioredq-redis-"))
        self.log_path = self.dir / "redis.log"
        _live_servers.add(self)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("RedisServer has no port until start() is called")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {self._port} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _argv(self) -> list[str]:
        argv = [self._binary, "--port", str(self.port), "--bind", HOST, "--daemonize", "no"]
        argv += ["--dir", str(self.dir), "--logfile", "", "--save", ""]
        # DEBUG (SLEEP, RELOAD...) for outage tests; no 5 s diskless-sync delay and a 1 s
        # replication ping, so new replicas sync and show up in CLUSTER SLOTS within ~1 s.
        argv += ["--enable-debug-command", "local", "--repl-diskless-sync-delay", "0"]
        argv += ["--repl-ping-replica-period", "1"]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.cluster_node_timeout is not None:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-node-timeout", str(self.cluster_node_timeout)]
        return argv + self.extra_args  # last, so they can override anything above

    def start(self) -> None:
        """Start the server and wait until it answers PING (at most ~10 s)."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        # A port picked by bind(0) can be taken before redis binds it; only then pick another.
        for _ in range(5 if self._auto_port else 1):
            if self._port is None:
                self._port = (
                    free_port() if self.cluster_node_timeout is None else free_cluster_port()
                )
            try:
                self._spawn_and_wait()
                break
            except _PortInUseError:
                if not self._auto_port:
                    raise RuntimeError(f"port {self._port} is in use:\n{self.log_tail()}") from None
                self._port = None
        else:
            raise RuntimeError(f"could not find a free port for redis-server:\n{self.log_tail()}")
        self._auto_port = False  # from now on restart() must reuse this port

    def _spawn_and_wait(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._paused = False
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                tail = self.log_tail()
                if "Address already in use" in tail:
                    raise _PortInUseError
                raise RuntimeError(f"redis-server exited with code {code} on start:\n{tail}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer PING within"
                    f" {START_TIMEOUT:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def ping(self) -> bool:
        """True when the server answers PING (False while loading, paused or down)."""
        if self._port is None:
            return False
        try:
            return call(self._port, "PING", timeout=0.5) == "PONG"
        except (OSError, RedisReplyError):
            return False

    def info(self, section: str) -> dict[str, str]:
        """``INFO <section>`` (or ``CLUSTER INFO`` for ``"cluster"``) as a dict of strings."""
        return _info(self.port, section)

    def _signal_stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            if self._paused:
                self._proc.send_signal(signal.SIGCONT)
            self._proc.terminate()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM our pid and wait; SIGKILL if it has not exited after ``timeout`` s."""
        self._signal_stop()
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL our pid (a crash: no shutdown, no final fsync) and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or ``kill()`` when ``hard``) and start again on the same port and dir."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung server)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Stop the server and remove its dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        _live_servers.discard(self)

    def log_tail(self, lines: int = 25) -> str:
        """The last lines this server logged since its latest start."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def __enter__(self) -> Self:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self._port} {state} dir={self.dir}>"


class _PortInUseError(Exception):
    pass


@dataclass(frozen=True)
class TLSFiles:
    """A test CA and the server and client certificates it signed (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, *, with_cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_tls_files(directory: Path) -> TLSFiles:
    """Make a CA, a server certificate for 127.0.0.1/localhost and a client certificate,
    with the openssl command line."""
    openssl = _find_binary("openssl")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-new", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=aioredq test CA")  # fmt: skip
    # A cluster node is also a client of the others' bus, which always checks certificates.
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
            f"extendedKeyUsage={usage}\n"
        )
        run("req", "-new", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=aioredq test {name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
            "-extfile", f"{name}.ext")  # fmt: skip
    return TLSFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


class SentinelServer:
    """One ``redis-server --sentinel`` child monitoring 127.0.0.1:``master_port`` as
    ``mymaster`` (quorum 1, down after 1 s); TLS-only with ``tls`` (the certificates to serve
    and to reach the master with)."""

    def __init__(self, master_port: int, *, tls: TLSFiles | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="aioredq-sentinel-"))
        listen = f"port {self.port}\n"
        if tls is not None:
            listen = (
                f"port 0\ntls-port {self.port}\ntls-replication yes\ntls-auth-clients no\n"
                f"tls-cert-file {tls.server_cert}\ntls-key-file {tls.server_key}\n"
                f"tls-ca-cert-file {tls.ca}\n"
            )
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"{listen}bind {HOST}\ndir {self.dir}\n"
            f"sentinel monitor mymaster {HOST} {master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n"
        )
        self.log = (self.dir / "log").open("wb")
        self.proc = subprocess.Popen(
            [_find_binary("redis-server"), str(conf), "--sentinel"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def call(self, *args: str | int) -> Reply:
        context = None if self.tls is None else self.tls.client_context(with_cert=False)
        return call(self.port, *args, tls=context)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, RedisReplyError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel on port {self.port}: no {what} after {timeout} s")
            time.sleep(0.1)

    def master_port(self) -> int:
        reply = self.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        assert isinstance(reply, list)
        port = reply[1]
        return int(port.decode() if isinstance(port, bytes) else str(port))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class TLSRedisServer(RedisServer):
    """A TLS-only ``redis-server`` (no plain port); ``client_certs`` makes it require a
    client certificate signed by the test CA (mutual TLS)."""

    def __init__(self, files: TLSFiles, *, client_certs: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.files = files
        self.client_certs = client_certs

    @property
    def url(self) -> str:
        return f"rediss://{HOST}:{self.port}/0?ssl_ca_certs={self.files.ca}"

    def _argv(self) -> list[str]:
        f = self.files
        return [
            *super()._argv(),
            *("--port", "0", "--tls-port", str(self.port)),
            *("--tls-cert-file", str(f.server_cert), "--tls-key-file", str(f.server_key)),
            *("--tls-ca-cert-file", str(f.ca)),
            *("--tls-auth-clients", "yes" if self.client_certs else "no"),
        ]

    def tls_call(self, *args: str | int) -> Reply:
        return call(self.port, *args, tls=self.files.client_context())

    def ping(self) -> bool:
        if self._port is None:
            return False
        try:
            return call(self._port, "PING", timeout=0.5, tls=self.files.client_context()) == "PONG"
        except (OSError, RedisReplyError):
            return False

    def info(self, section: str) -> dict[str, str]:
        reply = self.tls_call("INFO", section)
        assert isinstance(reply, bytes)
        fields = (line.split(":", 1) for line in reply.decode().splitlines() if ":" in line)
        return {key: value for key, value in fields}


# Safety net for interrupted runs: no server outlives the test process that started it.
_live_servers: weakref.WeakSet[RedisServer] = weakref.WeakSet()


@atexit.register
def _close_leftovers() -> None:
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.close()


@dataclass(frozen=True)
class ExternalRedis:
    """A server the suite did not start (``AIOREDQ_TEST_URL``): it cannot be restarted."""

    url: str
    managed: bool = False


class LocalCluster:
    """``masters`` masters (+ ``replicas`` each) joined by ``redis-cli --cluster create``."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        node_timeout: int = 2000,
        appendonly: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self._cli = _find_binary("redis-cli")
        self.masters = masters
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                appendonly=appendonly, extra_args=extra_args, cluster_node_timeout=node_timeout
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, create the cluster and wait until it has fully converged."""
        try:
            for node in self.nodes:
                node.start()
            argv = [self._cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports)]
            argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}"
                )
            self.wait_stable(timeout, replicas=self.replicas)
        except BaseException:
            self.close()
            raise

    def wait_stable(self, timeout: float = 20.0, *, replicas: int | None = None) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and the same slot owners,
        all of them running (e.g. after a failover). With ``replicas``, also wait until every
        slot range has that many replicas and every replica's link to its master is up."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._health_problem(replicas)
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not stable after {timeout:.0f} s: {problem}")
            time.sleep(0.1)

    def _health_problem(self, replicas: int | None) -> str | None:
        live = [node for node in self.nodes if node.running]
        live_ports = {node.port for node in live}
        views: set[tuple[tuple[int, int, int], ...]] = set()
        try:
            for node in live:
                state = node.info("cluster").get("cluster_state")
                if state != "ok":
                    return f"node {node.port}: cluster_state={state}"
                view = []
                for entry in _slot_entries(node.port):
                    start, end, master = entry[0], entry[1], entry[2]
                    if master not in live_ports:
                        return f"node {node.port}: slots {start}-{end} owned by dead {master}"
                    if replicas is not None and len(entry) - 3 != replicas:
                        count = len(entry) - 3
                        return f"node {node.port}: slots {start}-{end} have {count} replicas"
                    view.append((start, end, master))
                views.add(tuple(sorted(view)))
                replication = node.info("replication") if replicas else {}
                if replication.get("role") == "slave":
                    link = replication.get("master_link_status")
                    if link != "up":
                        return f"replica {node.port}: master_link_status={link}"
        except (OSError, RedisReplyError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if len(views) != 1:
            return f"nodes disagree about slot owners: {views}"
        return None

    def master_for_key(self, key: str) -> RedisServer:
        """The node that currently serves ``key``'s slot (per the first running node)."""
        port = next(node.port for node in self.nodes if node.running)
        slot = call(port, "CLUSTER", "KEYSLOT", key)
        for entry in _slot_entries(port):
            if isinstance(slot, int) and entry[0] <= slot <= entry[1]:
                return next(node for node in self.nodes if node.port == entry[2])
        raise RuntimeError(f"no master serves slot {slot!r} of {key!r}")

    def stop(self) -> None:
        """Stop every node by its pid (all signalled at once, so none waits for the others)."""
        for node in self.nodes:
            node._signal_stop()
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        """Stop every node and remove their dirs."""
        self.stop()
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _slot_entries(port: int) -> list[list[int]]:
    """CLUSTER SLOTS as ``[start, end, master_port, replica_port, ...]`` lists."""
    reply = call(port, "CLUSTER", "SLOTS")
    entries: list[list[int]] = []
    for raw in reply if isinstance(reply, list) else []:
        assert isinstance(raw, list) and isinstance(raw[0], int) and isinstance(raw[1], int)
        ports = [node[1] for node in raw[2:] if isinstance(node, list) and isinstance(node[1], int)]
        entries.append([raw[0], raw[1], *ports])
    return entries


class ServerFactory(Protocol):
    """Type of the ``redis_server_factory`` fixture."""

    def __call__(
        self, *, appendonly: bool = False, extra_args: list[str] | None = None
    ) -> RedisServer: ...


class ClusterFactory(Protocol):
    """Type of the ``redis_cluster_factory`` fixture."""

    def __call__(self, masters: int = 3, replicas: int = 0) -> LocalCluster: ...
