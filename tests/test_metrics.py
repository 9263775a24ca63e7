"""``--metrics-port``: Prometheus metrics of a real worker process, fetched over HTTP.

The worker runs ``tests.apps.cli_app:app`` (see tests/test_cli.py) against the suite's Redis;
every figure is checked against what was produced and against what Redis itself reports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from test_cli import (
    APP,
    CHANNEL,
    GROUP,
    MODULE,
    QUEUE,
    ROOT,
    STREAM,
    Worker,
    children_of,
    cli_env,
    eventually,
    handled,
    one_error_line,
    run_cli,
    subscribers,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(*args: str) -> Worker:
        worker = Worker(
            list(args), cli_env(tmp_path / "out.jsonl"), tmp_path / f"w{len(workers)}.log", False
        )
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            for child in children_of(worker.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            worker.kill()


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports that are free right now."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            first: int = sock.getsockname()[1]
        if first + n > 65535:
            continue
        try:
            for port in range(first, first + n):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no free ports")


def scrape(port: int) -> Samples | None:
    """Every sample on ``/metrics``, keyed by (name, labels); None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, handler: str | None = None, **labels: str) -> float:
    wanted = dict(labels, **({"handler": handler} if handler else {}))
    found = [
        v for (n, ls), v in samples.items() if n == name and wanted.items() <= dict(ls).items()
    ]
    assert len(found) == 1, f"{name} {wanted}: {found}"
    return found[0]


def test_metrics_serve_the_workers_counters_and_the_redis_figures(
    redis_url: str, r: redis.Redis, tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    port = free_ports(1)
    worker = start_worker(
        APP, "--url", redis_url, "--metrics-port", str(port), "--metrics-host", "127.0.0.1"
    )
    eventually(lambda: subscribers(r) == 1, "the worker to subscribe")
    r.lpush(QUEUE, "a", "b", "c", "reject")
    r.zadd(f"{{{QUEUE}}}:delayed", {"later": 1e15})  # due in a few thousand years
    for i in range(2):
        r.xadd(STREAM, {"n": str(i)})
    r.xadd(STREAM, {"kind": "reject"})
    r.publish(CHANNEL, "hi")
    out = tmp_path / "out.jsonl"
    eventually(lambda: len(handled(out)) == 6, "6 handled messages")
    eventually(lambda: r.xlen(f"{{{STREAM}}}:dead") == 1, "the stream's dead letter")

    def settled() -> Samples | None:
        samples = scrape(port)
        if samples is None or value(samples, "aioredq_pending", "event") != 0:
            return None
        return samples

    samples = eventually(settled, "the metrics with every entry acknowledged")
    assert worker.proc.poll() is None

    counts = {
        name: {
            counter: value(samples, f"aioredq_messages_{counter}_total", name)
            for counter in ("received", "succeeded", "failed", "retried", "dead_lettered")
        }
        for name in ("job", "event", "notice")
    }
    one_bad = {"received": 4, "succeeded": 3, "failed": 1, "retried": 0, "dead_lettered": 1}
    assert counts["job"] == one_bad
    assert counts["event"] == {**one_bad, "received": 3, "succeeded": 2}
    assert counts["notice"] == {**dict.fromkeys(one_bad, 0), "received": 1, "succeeded": 1}
    assert value(samples, "aioredq_messages_dropped_total", "notice") == 0
    latency = value(samples, "aioredq_handler_latency_seconds", "job", quantile="0.99")
    assert 0 <= latency <= value(samples, "aioredq_handler_latency_seconds", "job", quantile="1")

    # The Redis figures are what Redis reports.
    group = next(g for g in r.xinfo_groups(STREAM) if g["name"] == GROUP)
    assert value(samples, "aioredq_redis_up") == 1
    assert value(samples, "aioredq_length", "job") == r.llen(QUEUE) == 0
    assert value(samples, "aioredq_delayed", "job") == r.zcard(f"{{{QUEUE}}}:delayed") == 1
    assert value(samples, "aioredq_dead", "job") == r.llen(f"{{{QUEUE}}}:dead") == 1
    assert value(samples, "aioredq_processing", "job") == 0
    assert value(samples, "aioredq_consumers", "job", state="alive") == 1
    assert value(samples, "aioredq_length", "event") == r.xlen(STREAM) == 3
    assert value(samples, "aioredq_lag", "event") == group["lag"] == 0
    assert value(samples, "aioredq_dead", "event") == r.xlen(f"{{{STREAM}}}:dead") == 1
    assert value(samples, "aioredq_consumers", "event", state="dead") == 0
    assert value(samples, "aioredq_subscribers", "notice") == 1
    assert value(samples, "aioredq_paused", "job") == value(samples, "aioredq_paused", "event") == 0
    assert not [k for k in samples if k[0] == "aioredq_lag" and ("handler", "job") in k[1]]

    # Figures are read at scrape time: a new backlog shows at once.
    r.zadd(f"{{{QUEUE}}}:delayed", {"later-2": 1e15})
    assert value(eventually(lambda: scrape(port), "a scrape"), "aioredq_delayed", "job") == 2

    # A key of the wrong type hides its own figure only, and says which one.
    r.delete(f"{{{QUEUE}}}:dead")
    r.set(f"{{{QUEUE}}}:dead", "not a list")
    samples = eventually(lambda: scrape(port), "a scrape")
    assert value(samples, "aioredq_redis_up") == 1
    assert value(samples, "aioredq_figure_unreadable", "job", figure="dead") == 1
    assert not [k for k in samples if k[0] == "aioredq_dead" and ("handler", "job") in k[1]]
    assert value(samples, "aioredq_delayed", "job") == 2
    assert value(samples, "aioredq_dead", "event") == 1
    assert value(samples, "aioredq_consumers", "job", state="alive") == 1
    r.delete(f"{{{QUEUE}}}:dead")
    samples = eventually(lambda: scrape(port), "a scrape")
    assert not [k for k in samples if k[0] == "aioredq_figure_unreadable"]

    assert worker.stop(signal.SIGTERM) == 0, worker.output()
    assert scrape(port) is None  # the server is gone with the worker
    assert "Traceback" not in worker.output()


def test_each_worker_serves_its_own_counters_on_port_plus_its_index(
    redis_url: str, r: redis.Redis, tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    port = free_ports(2)
    supervisor = start_worker(
        APP, "--url", redis_url, "--workers", "2", "--metrics-port", str(port),
        "--metrics-host", "127.0.0.1",
    )  # fmt: skip
    eventually(lambda: subscribers(r) == 2, "2 workers to subscribe")
    assert r.publish(CHANNEL, "to both") == 2
    eventually(lambda: len(handled(tmp_path / "out.jsonl")) == 2, "both workers to receive")
    both = [eventually(lambda p=p: scrape(p), f"metrics on {p}") for p in (port, port + 1)]
    for samples in both:
        assert value(samples, "aioredq_messages_received_total", "notice") == 1
        assert value(samples, "aioredq_subscribers", "notice") == 2
    assert supervisor.stop() == 0, supervisor.output()


def test_metrics_without_prometheus_client_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # A package that shadows prometheus_client and fails to import, as if it were absent.
    shadow = tmp_path / "prometheus_client"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named prometheus_client')\n")
    for extra in ([], ["--workers", "2"]):
        done = run_cli(
            APP, "--metrics-port", "9", *extra, env=cli_env(PYTHONPATH=f"{ROOT}:{tmp_path}")
        )
        assert done.returncode == 2, done.stderr
        line = one_error_line(done)
        assert "pip install 'aioredq[prometheus]'" in line


def test_a_metrics_port_in_use_is_one_line_and_exit_2(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            done = run_cli(
                APP, "--url", redis_url, "--metrics-host", "127.0.0.1", "--metrics-port",
                str(port), *extra,
            )  # fmt: skip
            assert done.returncode == 2, done.stderr
            assert f"cannot serve metrics on 127.0.0.1:{port}" in one_error_line(done)


def test_help_documents_metrics_with_workers() -> None:
    done = subprocess.run(
        [*MODULE, "--help"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "--metrics-port" in done.stdout and "PORT+i" in done.stdout
