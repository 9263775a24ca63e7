"""The aioredq side: an App with default options and a no-op ``async def`` handler per model."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aioredq import App

from ._common import (
    CHANNEL,
    GROUP,
    QUEUE,
    STREAM,
    Tally,
    body,
    emit,
    memory_kb,
    paced,
    percentiles,
    raw_client,
    wait_settled,
)


def _app_with_handler(url: str, model: str, on_body: Any) -> App:
    """An App whose only handler takes a bare ``dict`` body, as the spec's examples do (a
    parametrized ``dict[str, Any]`` would add per-key validation to every message)."""
    app = App(url)
    if model == "task":

        @app.task(QUEUE)
        async def handle_task(body: dict) -> None:
            on_body(body)

    elif model == "stream":

        @app.stream(STREAM, group=GROUP)
        async def handle_event(body: dict) -> None:
            on_body(body)

    else:

        @app.subscribe(CHANNEL)
        async def handle_notice(body: dict) -> None:
            on_body(body)

    return app


async def consume(url: str, model: str, n: int, timeout: float) -> dict[str, Any]:
    """Drain a pre-filled backlog (task, stream) or what a concurrent publisher sends (pub/sub).

    Backlogs are timed from the first message the handler gets (the first fetch's reply)
    until the handler has seen ``n`` messages and Redis holds no unacknowledged one.
    """
    tally = Tally(n)
    app = _app_with_handler(url, model, lambda _body: tally.hit())
    probe = raw_client(url)
    try:
        await app.connect()  # connection set-up stays out of the timing
        rss_start = memory_kb("VmRSS")
        started = time.perf_counter()
        await app.start()
        if model == "pubsub":
            emit("READY")
            await tally.wait_stream_end(time.perf_counter() + timeout)
            rate = tally.rate_over_span()
            elapsed = tally.last - tally.first
            startup = None  # the subscriber waits for the publisher: nothing to report
            cpu = tally.cpu_us_per_message()
        else:
            await _wait_done(tally, timeout)
            await wait_settled(probe, model)
            # From the first message the handler got: start-up (imports, script loads, group
            # checks) is a one-off, reported apart as startup_s.
            elapsed = time.perf_counter() - tally.first
            rate = n / elapsed
            cpu = tally.cpu_us_per_message()
            startup = tally.first - started
        stats = app.stats()
    finally:
        await app.aclose()
        await probe.aclose()
    (handler_stats,) = stats.handlers.values()
    return {
        "count": tally.seen,
        "elapsed_s": elapsed,
        "rate": rate,
        "cpu_us_per_msg": cpu,
        "dropped": n - tally.seen,
        "buffer_dropped": handler_stats.dropped,
        "failed": handler_stats.failed + handler_stats.dead_lettered,
        "startup_s": startup,
        "rss_start_kb": rss_start,
        "rss_peak_kb": memory_kb("VmHWM"),
    }


async def _wait_done(tally: Tally, timeout: float) -> None:
    try:
        await asyncio.wait_for(tally.done.wait(), timeout)
    except TimeoutError:
        raise RuntimeError(
            f"handler saw {tally.seen}/{tally.expected} in {timeout:.0f} s"
        ) from None


async def produce(url: str, model: str, n: int, batch: int) -> dict[str, Any]:
    """The batch producing API from the same Python dicts the raw producer serializes."""
    bodies = [body(i) for i in range(n)]
    batches = [bodies[i : i + batch] for i in range(0, n, batch)]
    app = App(url)
    try:
        await app.connect()
        started = time.perf_counter()
        for chunk in batches:
            if model == "task":
                await app.enqueue_many(QUEUE, chunk)
            elif model == "stream":
                await app.append_many(STREAM, chunk)
            else:
                await app.publish_many(CHANNEL, chunk)
        elapsed = time.perf_counter() - started
    finally:
        await app.aclose()
    return {"count": n, "elapsed_s": elapsed, "rate": n / elapsed}


async def latency_consumer(url: str, model: str, n: int, timeout: float) -> dict[str, Any]:
    """Publish -> handler-start latency: the producer puts its clock in the body."""
    samples: list[float] = []
    seqs: list[int] = []
    tally = Tally(n)

    def on_body(received: dict[str, Any]) -> None:
        samples.append(time.monotonic() - float(received["ts"]))
        seqs.append(int(received["seq"]))
        tally.hit()

    app = _app_with_handler(url, model, on_body)
    try:
        await app.start()
        emit("READY")
        await tally.wait_stream_end(time.perf_counter() + timeout)
    finally:
        await app.aclose()
    warmup = min(100, len(samples) // 10)  # first connections, script loads
    # The slowest deliveries by sequence number (sent 1 ms apart): periodic stalls show here.
    slowest = sorted(zip(samples[warmup:], seqs[warmup:], strict=True), reverse=True)[:10]
    return {
        "count": len(samples),
        "dropped": n - len(samples),
        **percentiles(samples[warmup:]),
        "slowest": [[seq, round(lat * 1000, 2)] for lat, seq in slowest],
    }


async def latency_producer(url: str, model: str, n: int, rate: float) -> dict[str, Any]:
    """One message at a time through the single-message API, on a fixed schedule."""
    app = App(url)

    async def send(i: int) -> object:
        message = body(i, time.monotonic())
        if model == "task":
            return await app.enqueue(QUEUE, message)
        if model == "stream":
            return await app.append(STREAM, message)
        return await app.publish(CHANNEL, message)

    try:
        await app.connect()
        achieved = await paced(n, rate, send)
    finally:
        await app.aclose()
    return {"count": n, "rate": achieved}
