"""The aioredq side: an App with default options and a no-op ``async def`` handler per model;
with ``feature`` (``_features.py``), the same with that one feature on."""

from __future__ import annotations

import asyncio
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
    raw_client,
    wait_settled,
)
from ._features import Armed, Feature, arm

# ``shutdown_timeout`` of the consuming apps, the one option not at its default: only a stop
# reads it, and the stop comes after the timing. Bounded, the stop ends the blocking read in
# flight at once instead of waiting out its BLOCK (a second per run).
STOP_WITHIN = 0.1


def app_with_handler(
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
    app = app_with_handler(url, model, lambda _body: tally.hit(), chosen, armed)
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
