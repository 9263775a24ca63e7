"""The ``scaling`` part: the real command line with more processes, and a cluster with more
masters, each draining the same backlog.

(a) ``python -m aioredq benchmarks._scaling_app:app --workers 1`` against ``--workers 2``: one
    command line runs the task and the stream handler; once every worker waits on Redis (as
    many blocked clients as workers x handlers), a backlog lands at once (one MULTI), first the
    task queue, then, when it is drained and acknowledged, the stream. Each drain is timed from
    that EXEC until nothing is left unacknowledged (the parent polls Redis every millisecond).
(b) a local Redis Cluster of 1 master against 3 (``_cluster.py``), one ``--workers 1`` command
    line running six task queues spread two per master (``_scaling_app.CLUSTER_QUEUES``); each
    queue's backlog is written under a key of the same slot and RENAMEd into place, all six
    back to back, and the total is timed the same way.

On a 2-core machine the extra workers and masters share the same two cores with the servers and
the parent, so the ratios show contention, not what more cores would give.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import redis
from redis.crc import key_slot

from ._common import GROUP, PAD, QUEUE, STREAM, body
from ._runner import PREFILL_CHUNK, STREAM_FILL, RunFailed
from ._scaling_app import CLUSTER_QUEUES, URL_ENV
from ._server import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
APP = "benchmarks._scaling_app:app"
POLL = 0.001
READY_WITHIN = 60.0
DRAIN_WITHIN = 600.0
STOP_GRACE = 15.0
# The command line's --shutdown-timeout: bounded, a stop ends the blocking read in flight at
# once instead of waiting out its BLOCK; it comes after the timing, with every handler idle.
SHUTDOWN = 0.1
Node = redis.Redis
FOOTNOTE = (
    "the machine has {cpus} CPU(s): the second worker and the extra masters share them with "
    "the servers and this process, so a ratio shows contention, not what more cores would give"
)


class CommandLine:
    """``python -m aioredq`` running the scaling app: started, waited for, stopped by pid."""

    def __init__(self, url: str, workers: int, only: tuple[str, ...]) -> None:
        self.stderr: IO[bytes] = tempfile.TemporaryFile()
        argv = [sys.executable, "-m", "aioredq", APP, "--url", url, "--workers", str(workers)]
        argv += ["--only", *only, "--log-level", "WARNING", "--shutdown-timeout", str(SHUTDOWN)]
        env = dict(os.environ)
        env[URL_ENV] = url
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            preexec_fn=die_with_parent,
        )

    def failure(self, what: str) -> RunFailed:
        self.stop()
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace")[-3000:]
        return RunFailed(f"{' '.join(map(str, self.proc.args))} {what}\n{tail}")  # type: ignore[arg-type]

    def wait_blocked(self, nodes: list[Node], expected: int) -> None:
        """Until ``expected`` clients wait in a blocking read: every worker is up."""
        deadline = time.monotonic() + READY_WITHIN
        while sum(int(n.info("clients")["blocked_clients"]) for n in nodes) < expected:
            if self.proc.poll() is not None:
                raise self.failure(f"exited {self.proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise self.failure(f"had fewer than {expected} blocked clients")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def _running(url: str, workers: int, only: tuple[str, ...]) -> Iterator[CommandLine]:
    cli = CommandLine(url, workers, only)
    try:
        yield cli
    finally:
        cli.stop()
        cli.stderr.close()


def _envelopes(base: int, n: int) -> list[bytes]:
    """Task items exactly as aioredq enqueues them, made by its own encoder."""
    from aioredq._codec import encode_envelope, new_id

    return [encode_envelope(body(i), msg_id=new_id()) for i in range(base, base + n)]


def _timed_drain(
    cli: CommandLine, land: Callable[[], None], settled: Callable[[], bool], n: int
) -> dict[str, Any]:
    land()
    started = time.perf_counter()
    deadline = time.monotonic() + DRAIN_WITHIN
    while not settled():
        if cli.proc.poll() is not None:
            raise cli.failure(f"exited {cli.proc.returncode} while draining")
        if time.monotonic() > deadline:
            raise cli.failure(f"did not drain {n} messages in {DRAIN_WITHIN:.0f} s")
        time.sleep(POLL)
    elapsed = time.perf_counter() - started
    return {"count": n, "elapsed_s": elapsed, "rate": n / elapsed}


# (a) workers -----------------------------------------------------------------------------
def workers_run(admin: Node, url: str, workers: int, n: int) -> dict[str, Any]:
    """Task then stream backlog of ``n`` each, drained by one command line of ``workers``."""
    admin.flushall()
    admin.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    with _running(url, workers, (QUEUE, STREAM)) as cli:
        cli.wait_blocked([admin], 2 * workers)
        task = _timed_drain(cli, lambda: _land_tasks(admin, n), lambda: _tasks_done(admin), n)
        stream = _timed_drain(cli, lambda: _land_stream(admin, n), lambda: _stream_done(admin), n)
    return {"workers": workers, "task": task, "stream": stream}


def _land_tasks(admin: Node, n: int) -> None:
    pipe = admin.pipeline(transaction=True)
    for base in range(0, n, PREFILL_CHUNK):
        pipe.lpush(QUEUE, *_envelopes(base, min(PREFILL_CHUNK, n - base)))
    pipe.execute()


def _tasks_done(admin: Node) -> bool:
    lists = [QUEUE, *admin.keys(f"{{{QUEUE}}}:processing:*")]
    pipe = admin.pipeline(transaction=False)
    for key in lists:
        pipe.llen(key)
    return not any(pipe.execute())


def _land_stream(admin: Node, n: int) -> None:
    fill = admin.register_script(STREAM_FILL)
    fill.sha = str(admin.script_load(STREAM_FILL))
    pipe = admin.pipeline(transaction=True)
    for base in range(0, n, PREFILL_CHUNK):
        fill(keys=[STREAM], args=[base, min(PREFILL_CHUNK, n - base), PAD], client=pipe)
    pipe.execute()


def _stream_done(admin: Node) -> bool:
    (group,) = admin.xinfo_groups(STREAM)
    return int(group["lag"] or 0) == 0 and int(group["pending"]) == 0


# (b) cluster -----------------------------------------------------------------------------
def cluster_run(url: str, n: int) -> dict[str, Any]:
    """``n`` tasks over the six spread queues, drained by one worker, on the cluster at
    ``url`` (emptied first)."""
    ports = [int(hp.rsplit(":", 1)[1]) for hp in url.split("//", 1)[1].split(",")]
    nodes = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=None) for p in ports]
    try:
        for node in nodes:
            node.flushall()
        owner = _owners(nodes)
        per_queue = n // len(CLUSTER_QUEUES)
        total = per_queue * len(CLUSTER_QUEUES)
        for queue, node in owner.items():
            _stage(node, queue, per_queue)
        with _running(url, 1, CLUSTER_QUEUES) as cli:
            cli.wait_blocked(nodes, len(CLUSTER_QUEUES))
            result = _timed_drain(
                cli, lambda: _land_staged(owner), lambda: _cluster_done(owner), total
            )
    finally:
        for node in nodes:
            node.close()
    return {"masters": len(nodes), "queues": len(CLUSTER_QUEUES)} | result


def _owners(nodes: list[Node]) -> dict[str, Node]:
    """Which node serves each spread queue, from ``CLUSTER SLOTS``."""
    by_port = {int(node.connection_pool.connection_kwargs["port"]): node for node in nodes}
    ranges = [(int(r[0]), int(r[1]), int(r[2][1])) for r in nodes[0].cluster("SLOTS")]
    owners = {}
    for queue in CLUSTER_QUEUES:
        slot = key_slot(queue.encode())
        port = next((p for low, high, p in ranges if low <= slot <= high), None)
        if port is None:
            raise RunFailed(f"no node serves slot {slot} of {queue}")
        owners[queue] = by_port[port]
    return owners


def _staging(queue: str) -> str:
    return f"{{{queue}}}:staged"  # the queue's own slot: RENAME stays on one node


def _stage(node: Node, queue: str, n: int) -> None:
    for base in range(0, n, PREFILL_CHUNK):
        node.lpush(_staging(queue), *_envelopes(base, min(PREFILL_CHUNK, n - base)))


def _land_staged(owner: dict[str, Node]) -> None:
    for queue, node in owner.items():
        node.rename(_staging(queue), queue)


def _cluster_done(owner: dict[str, Node]) -> bool:
    for queue, node in owner.items():
        if node.llen(queue) or node.keys(f"{{{queue}}}:processing:*"):
            return False
    return True
