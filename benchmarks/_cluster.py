"""Throwaway local Redis Clusters of 1 and 3 masters (no replicas) for the ``scaling`` part.

Each node is a ``BenchServer`` (free port, no persistence, stopped by its pid) started with
``--cluster-enabled yes``. Three masters are joined by ``redis-cli --cluster create ...
--cluster-replicas 0 --cluster-yes`` (it refuses fewer than three); a single master takes
every slot itself (``CLUSTER ADDSLOTSRANGE 0 16383``). Either way the cluster is used once
every node reports ``cluster_state:ok``, every slot assigned and every master known.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from ._server import HOST, BenchServer

NODE_OPTIONS = ("--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
READY_WITHIN = 30.0


class ClusterUnavailable(RuntimeError):
    """This machine cannot run a local cluster (the reason is the message)."""


def unavailable() -> str | None:
    """Why no local cluster can be started here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server not found"
    if shutil.which("redis-cli") is None:
        return "redis-cli not found (it joins the three masters)"
    probe = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return "redis-server --version failed"
    return None


@contextlib.contextmanager
def local_clusters(sizes: tuple[int, ...]) -> Iterator[dict[int, str]]:
    """``with local_clusters((1, 3)) as urls``: one cluster of each size, ``urls[masters]`` a
    ``redis+cluster://`` URL naming every node. All are started before any is waited for: a
    master reports ``cluster_state:ok`` only two seconds after it started."""
    nodes: list[BenchServer] = []
    try:
        ports: dict[int, list[int]] = {}
        for masters in sizes:
            ports[masters] = [_start_node(nodes).port for _ in range(masters)]
        for group in ports.values():
            _join(group)
        _wait_ok([p for group in ports.values() for p in group])
        yield {
            masters: "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in group)
            for masters, group in ports.items()
        }
    finally:
        for node in nodes:
            node.__exit__(None, None, None)


def _start_node(nodes: list[BenchServer]) -> BenchServer:
    node = BenchServer(extra_args=(*NODE_OPTIONS, "--cluster-config-file", "nodes.conf"))
    nodes.append(node)
    try:
        node.start()
    except RuntimeError as exc:
        why = f"redis-server would not start in cluster mode: {exc}"
        raise ClusterUnavailable(why) from None
    return node


def _join(ports: list[int]) -> None:
    """Make one cluster of these nodes (waiting for it is ``_wait_ok``'s)."""
    if len(ports) == 1:
        with redis.Redis(host=HOST, port=ports[0]) as client:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, REDIS_CLUSTER_HASH_SLOTS - 1)
    else:
        created = subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *(f"{HOST}:{p}" for p in ports)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=READY_WITHIN,
            check=False,
        )
        if created.returncode != 0:
            raise ClusterUnavailable(f"redis-cli --cluster create failed: {created.stdout[-500:]}")


def _wait_ok(ports: list[int]) -> None:
    deadline = time.monotonic() + READY_WITHIN
    clients = [redis.Redis(host=HOST, port=p, decode_responses=True) for p in ports]
    try:
        while time.monotonic() < deadline:
            if all(_node_ok(client) for client in clients):
                return
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    raise ClusterUnavailable(f"the cluster on ports {ports} did not reach cluster_state:ok")


def _node_ok(client: redis.Redis) -> bool:
    text = str(client.execute_command("CLUSTER", "INFO"))
    info = dict(line.split(":", 1) for line in text.split() if ":" in line)
    return (
        info.get("cluster_state") == "ok"
        and int(info.get("cluster_slots_ok", 0)) == REDIS_CLUSTER_HASH_SLOTS
        and int(info.get("cluster_known_nodes", 0)) == int(info.get("cluster_size", 0))
    )
