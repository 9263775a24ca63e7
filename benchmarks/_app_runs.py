"""The aioredq side: an App with default options and a no-op ``async def`` handler per model;
with ``feature`` (``_features.py``), the same with that one feature on."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
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
from ._features import Armed, Feature, arm

# ``shutdown_timeout`` of the consuming apps, the one option not at its default: only a stop
# reads it, and the stop comes after the timing. Bounded, the stop ends the blocking read in
# flight at once instead of waiting out its BLOCK (a second per run).
STOP_WITHIN = 0.1
PHASE_PAUSE = 0.05  # between two latency rates: the consumer catches up


def _app_with_handler(
    url: str, model: str, on_body: Any, feature: Feature | None = None, armed: Armed | None = None
) -> App:
    """An App whose only handler takes a bare ``dict`` body, as the spec's examples do (a
    parametrized ``dict[str, Any]`` would add per-key validation to every message)."""
    app = App(url, shutdown_timeout=STOP_WITHIN, **(armed.app_kwargs if armed else {}))
    options = dict(feature.decorator) if feature else {}
    if model == "task":

        @app.task(QUEUE, **options)
        async def handle_task(body: dict) -> None:
            on_body(body)

    elif model == "stream":

        @app.stream(STREAM, group=GROUP, **options)
        async def handle_event(body: dict) -> None:
            on_body(body)

    else:

        @app.subscribe(CHANNEL, **options)
        async def handle_notice(body: dict) -> None:
            on_body(body)

    return app


async def consume(
    url: str, model: str, n: int, timeout: float, feature: str | None = None
) -> dict[str, Any]:
    """Drain a pre-filled backlog (task, stream) or what a concurrent publisher sends (pub/sub).

    Backlogs are timed from the first message the handler gets (the first fetch's reply)
    until the handler has seen ``n`` messages and Redis holds no unacknowledged one.
    """
    tally = Tally(n)
    chosen, armed = arm(feature)
    app = _app_with_handler(url, model, lambda _body: tally.hit(), chosen, armed)
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
    extra = armed.finish() if armed.finish else {}
    return extra | {
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


Send = Callable[[list[Any], int], Awaitable[Any]]


def _sender(app: App, model: str, feature: Feature | None, single: bool) -> Send:
    """How one batch of bodies (numbered from ``base``) is produced: the batch API, or, with
    ``single``, one ``enqueue`` per body, the whole batch at once (the form a task feature
    whose enqueue keyword has no batch form needs, and its feature-off row)."""
    if model == "stream":
        return lambda chunk, _base: app.append_many(STREAM, chunk)
    if model == "pubsub":
        return lambda chunk, _base: app.publish_many(CHANNEL, chunk)
    if not single:
        options = dict(feature.enqueue_many or {}) if feature and feature.enqueue else {}
        return lambda chunk, _base: app.enqueue_many(QUEUE, chunk, **options)
    per_message = feature.enqueue if feature else None

    async def one_each(chunk: list[Any], base: int) -> list[str]:
        return await asyncio.gather(
            *(
                app.enqueue(QUEUE, b, **(per_message(base + k) if per_message else {}))
                for k, b in enumerate(chunk)
            )
        )

    return one_each


async def produce(
    url: str,
    model: str,
    n: int,
    batch: int,
    feature: str | None = None,
    single: bool = False,
    timed: bool = True,
) -> dict[str, Any]:
    """The batch producing API from the same Python dicts the raw producer serializes (or
    one enqueue per body: ``_sender``). ``timed=False`` is a feature's prefill."""
    bodies = [body(i) for i in range(n)]
    batches = [(bodies[i : i + batch], i) for i in range(0, n, batch)]
    chosen, armed = arm(feature)
    app = App(url, **armed.app_kwargs)
    send = _sender(app, model, chosen, single)
    replies = []
    try:
        await app.connect()
        cpu = time.process_time()
        started = time.perf_counter()
        for chunk, base in batches:
            replies.append(await send(chunk, base))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await app.aclose()
    extra = armed.finish() if armed.finish else {}
    if model != "pubsub":  # every body got its own id (none deduplicated away)
        extra["ids"] = len({i for reply in replies for i in reply})
    if not timed:
        return extra | {"count": n}
    return extra | {
        "count": n,
        "elapsed_s": elapsed,
        "rate": n / elapsed,
        "cpu_us_per_msg": cpu / n * 1e6,
    }


async def latency_consumer(
    url: str, model: str, counts: list[int], timeout: float
) -> dict[str, Any]:
    """Publish -> handler-start latency: the producer puts its clock in the body. It sends
    ``counts[k]`` messages at its k-th rate, numbered on from the previous phase."""
    n = sum(counts)
    samples: list[float] = [math.nan] * n
    tally = Tally(n)

    def on_body(received: dict[str, Any]) -> None:
        samples[int(received["seq"])] = time.monotonic() - float(received["ts"])
        tally.hit()

    app = _app_with_handler(url, model, on_body)
    try:
        await app.start()
        emit("READY")
        await tally.wait_stream_end(time.perf_counter() + timeout)
    finally:
        await app.aclose()
    phases = []
    base = 0
    for k, count in enumerate(counts):
        # The first phase's first messages open connections and load scripts: left out.
        skip = min(100, count // 10) if k == 0 else 0
        mine = samples[base + skip : base + count]
        got = [s for s in mine if not math.isnan(s)]
        phases.append({"count": len(got), "dropped": len(mine) - len(got), **percentiles(got)})
        base += count
    return {"count": tally.seen, "dropped": n - tally.seen, "phases": phases}


async def latency_producer(
    url: str, model: str, rates: list[float], counts: list[int]
) -> dict[str, Any]:
    """The single-message API (one call per message), sent on a fixed schedule at each rate
    in turn (``paced``), with a pause between rates for the consumer to catch up."""
    app = App(url)

    async def send(i: int) -> object:
        message = body(i, time.monotonic())
        if model == "task":
            return await app.enqueue(QUEUE, message)
        if model == "stream":
            return await app.append(STREAM, message)
        return await app.publish(CHANNEL, message)

    achieved = []
    try:
        await app.connect()
        base = 0
        for rate, count in zip(rates, counts, strict=True):
            if base:
                await asyncio.sleep(PHASE_PAUSE)
            achieved.append(await paced(count, rate, lambda i, b=base: send(b + i)))
            base += count
    finally:
        await app.aclose()
    return {"count": base, "rates": achieved}
