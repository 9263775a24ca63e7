"""Prometheus metrics (extra ``aioredq[prometheus]``): the app's counters and latency, plus the
Redis figures ``inspect`` shows (length, lag, pending, processing, delayed, dead letters, ...).

Everything is sampled when Prometheus scrapes: the HTTP server's thread asks the event loop for
a snapshot (``app.stats()`` and ``inspect``'s figures), so the counters are only ever touched by
the loop and the Redis figures are as fresh as the scrape.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import anyio

from ._app import App
from ._connection import Connection
from ._exceptions import ConfigurationError
from ._inspect import figures
from ._stats import Stats

log = logging.getLogger("aioredq")
COUNTERS = (
    "received",
    "succeeded",
    "failed",
    "retried",
    "dead_lettered",
    "dropped",
    "timed_out",
    "cancelled",
)
GAUGES = {
    "length": "Items or entries in the queue or stream (LLEN / XLEN)",
    "lag": "Stream entries not yet delivered to the group (XINFO GROUPS lag)",
    "pending": "Stream entries delivered and not yet acknowledged (XPENDING)",
    "processing": "Task items in the consumers' processing lists",
    "delayed": "Task items waiting for their due time, retries included",
    "dead": "Dead letters, whoever wrote them",
    "subscribers": "Pub/sub subscribers of the handler's channels (PUBSUB NUMSUB)",
    "paused": "1 while the handler is paused (aioredq pause), 0 otherwise",
}
LABELS = ["handler", "kind", "key"]
SCRAPE_TIMEOUT = 10.0


def require_prometheus() -> None:
    """Raise ConfigurationError when prometheus-client is not installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "--metrics-port needs prometheus-client: pip install 'aioredq[prometheus]'"
        ) from None


class _Collector:
    """A prometheus-client collector whose samples come from the app's event loop."""

    def __init__(self, app: App, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.conn = conn
        self.loop = loop
        self.closed = False

    async def _sample(self) -> tuple[Stats, list[dict[str, Any]] | None]:
        stats = self.app.stats()
        try:
            with anyio.fail_after(SCRAPE_TIMEOUT / 2):
                return stats, await figures(self.app, self.conn)
        except Exception as exc:  # Redis unreachable: counters still, figures absent
            log.debug("metrics: cannot read the Redis figures: %s", exc)
            return stats, None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if self.closed:
            return
        future = asyncio.run_coroutine_threadsafe(self._sample(), self.loop)
        try:
            stats, rows = future.result(SCRAPE_TIMEOUT)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:  # loop busy or closed
            future.cancel()
            log.debug("metrics: no sample from the event loop: %r", exc)
            return
        yield from _process_families(stats)
        up = GaugeMetricFamily("aioredq_redis_up", "1 if the Redis figures could be read")
        up.add_metric([], 0 if rows is None else 1)
        yield up
        if rows is not None:
            yield from _redis_families(rows)


def _process_families(stats: Stats) -> Iterator[Any]:
    """This process's counters and handler latencies."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    handlers = stats.handlers.values()
    for counter in COUNTERS:
        family = CounterMetricFamily(
            f"aioredq_messages_{counter}",
            f"Messages {counter.replace('_', ' ')} by this process",
            labels=LABELS,
        )
        for s in handlers:
            family.add_metric([s.name, s.kind, s.key], getattr(s, counter))
        yield family
    latency = GaugeMetricFamily(
        "aioredq_handler_latency_seconds",
        "Handler run time over its last runs (at most 4096) in this process; quantile 1 is "
        "the maximum",
        labels=[*LABELS, "quantile"],
    )
    for s in handlers:
        if s.latency.count:
            for q, value in (
                ("0.5", s.latency.p50),
                ("0.99", s.latency.p99),
                ("1", s.latency.max),
            ):
                latency.add_metric([s.name, s.kind, s.key, q], value)
    yield latency


def _redis_families(rows: list[dict[str, Any]]) -> Iterator[Any]:
    """The figures read from Redis, one labelled sample per handler."""
    from prometheus_client.core import GaugeMetricFamily

    for gauge, doc in GAUGES.items():
        figure = GaugeMetricFamily(f"aioredq_{gauge}", doc, labels=LABELS)
        for row in rows:
            if row[gauge] is not None:
                figure.add_metric([row["name"], row["kind"], row["key"]], float(row[gauge]))
        yield figure
    consumers = GaugeMetricFamily(
        "aioredq_consumers",
        "Consumers registered on the queue or group, alive (lease current) or dead",
        labels=[*LABELS, "state"],
    )
    oldest = GaugeMetricFamily(
        "aioredq_oldest_pending_seconds",
        "Age of the oldest message not finished yet (waiting or in progress): from its "
        "stream entry id, or its task envelope's enqueued_at",
        labels=LABELS,
    )
    unreadable = GaugeMetricFamily(
        "aioredq_figure_unreadable",
        "1 for each figure Redis refused to give at this scrape (a key of the wrong type, "
        "a command the ACL denies); the figure's own gauge is absent",
        labels=[*LABELS, "figure"],
    )
    for row in rows:
        labels = [row["name"], row["kind"], row["key"]]
        if row["consumers"] is not None:
            for state in ("alive", "dead"):
                consumers.add_metric([*labels, state], row["consumers"][state])
        if row["oldest_pending_s"] is not None:
            oldest.add_metric(labels, row["oldest_pending_s"])
        for figure, reason in row.get("errors", {}).items():
            unreadable.add_metric([*labels, figure], 1)
            log.debug("metrics: %s of %r unreadable: %s", figure, row["name"], reason)
    ticks = GaugeMetricFamily(
        "aioredq_schedule_tick_seconds",
        "A periodic handler's next tick and the last one fired (unix time; 'last' absent "
        "until one fires)",
        labels=[*LABELS, "tick"],
    )
    for row in rows:
        when = row.get("schedule")
        for tick in ("next", "last_fired"):
            if when and when[tick]:
                stamp = datetime.fromisoformat(when[tick]).timestamp()
                ticks.add_metric([row["name"], row["kind"], row["key"], tick], stamp)
    yield consumers
    yield oldest
    yield unreadable
    yield ticks


@contextlib.asynccontextmanager
async def serve_metrics(app: App, port: int, host: str = "0.0.0.0") -> AsyncIterator[None]:
    """Serve Prometheus metrics on ``http://host:port/metrics`` while the block runs.

    The Redis figures are read through a small connection of their own, so they never compete
    with the consumers' connections and outlive the app's shutdown cleanly.
    """
    require_prometheus()
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.process_collector import ProcessCollector

    own = None if app.target.scheme == "memory" else Connection(app.target, max_connections=4)
    conn = app.connection if own is None else own
    collector = _Collector(app, conn, asyncio.get_running_loop())
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if own is not None:
            await own.aclose()
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)
    try:
        yield
    finally:
        collector.closed = True
        await anyio.to_thread.run_sync(server.shutdown)
        server.server_close()
        thread.join(timeout=5)
        if own is not None:
            await own.aclose()
