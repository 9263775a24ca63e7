"""Prometheus metrics (extra ``aioredq[prometheus]``): the app's counters and latency, plus the
Redis figures ``inspect`` shows (length, lag, pending, processing, delayed, dead letters)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

from ._app import App
from ._exceptions import ConfigurationError
from ._inspect import figures

log = logging.getLogger("aioredq")
GAUGES = ("length", "lag", "pending", "processing", "delayed", "dead", "subscribers")
COUNTERS = ("received", "succeeded", "failed", "retried", "dead_lettered", "dropped")


class _Collector:
    def __init__(self, app: App) -> None:
        self.app = app
        self.rows: list[dict[str, Any]] = []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["handler", "kind", "key"]
        stats = self.app.stats().handlers
        for counter in COUNTERS:
            family = CounterMetricFamily(
                f"aioredq_messages_{counter}",
                f"Messages {counter.replace('_', ' ')}",
                labels=labels,
            )
            for s in stats.values():
                family.add_metric([s.name, s.kind, s.key], getattr(s, counter))
            yield family
        latency = GaugeMetricFamily(
            "aioredq_handler_seconds", "Handler run time", labels=[*labels, "quantile"]
        )
        for s in stats.values():
            for q, value in (("0.5", s.latency.p50), ("0.99", s.latency.p99)):
                latency.add_metric([s.name, s.kind, s.key, q], value)
        yield latency
        for gauge in GAUGES:
            figure = GaugeMetricFamily(f"aioredq_{gauge}", f"Redis figure: {gauge}", labels=labels)
            for row in self.rows:
                if row.get(gauge) is not None:
                    figure.add_metric([row["name"], row["kind"], row["key"]], row[gauge])
            yield figure


@contextlib.asynccontextmanager
async def serve_metrics(app: App, port: int, refresh: float = 5.0) -> AsyncIterator[None]:
    """Serve ``/metrics`` on ``port`` while the block runs; Redis figures refresh every
    ``refresh`` seconds in the background."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'aioredq[prometheus]'"
        ) from None
    collector = _Collector(app)
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(port, registry=registry)
    log.info("serving Prometheus metrics on :%d/metrics", port)

    async def refresh_rows() -> None:
        while True:
            try:
                collector.rows = await figures(app)
            except Exception as exc:  # figures are best effort; the worker goes on
                log.debug("metrics refresh failed: %s", exc)
            await anyio.sleep(refresh)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh_rows)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    finally:
        server.shutdown()
        thread.join(timeout=5)
