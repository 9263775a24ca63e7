"""A throwaway redis-server for one benchmark run.

Started on a free port of 127.0.0.1 without persistence and stopped by the pid we own, never by
name. Pub/sub output buffers are unlimited so that a publisher running flat out cannot get a
subscriber disconnected mid-measurement (the same setting for aioredq and the raw baseline).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the benchmark process dies, however it
    dies (Linux), so no server or measured process outlives an interrupted run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class BenchServer:
    """``with BenchServer() as server: server.url``."""

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        """``extra_args``: more redis-server options (a cluster node's, for instance)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        self._binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="aioredq-bench-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._extra = list(extra_args)
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def dir(self) -> Path:
        return self._dir

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        for _ in range(5):  # a port picked by bind(0) can be taken before redis binds it
            self.port = _free_port()
            argv = [self._binary, "--port", str(self.port), "--bind", HOST]
            argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
            argv += ["--dir", str(self._dir), "--logfile", str(self._dir / "redis.log")]
            argv += ["--client-output-buffer-limit", "pubsub 0 0 0", *self._extra]
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _ping(self.port):
                    return
                time.sleep(0.02)
            self.stop()
        raise RuntimeError(f"redis-server did not start; see {self._dir / 'redis.log'}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
