"""The ``latency`` part: produce -> handler start, at each of ``--latency-rates`` in turn.

Two processes, an aioredq consumer (default App, a no-op handler) and an aioredq producer. The
producer works on a 1 ms clock (``TICK``): message ``i`` of a phase is due at ``start + i /
rate``, and at every tick the producer sends the messages due by then in ONE batched call
(``enqueue_many`` / ``append_many`` / ``publish_many``), as a busy service that buffers what
its requests produce for a millisecond would. A single process cannot reach 10k or 50k
producing calls per second, one call per message, so one call per message would measure the
sender, not the path to the handler.

Each body carries its own send timestamp (``time.monotonic()`` taken as the body is built,
just before the batched call); the handler's first step takes ``time.monotonic()`` again. The
two processes share the machine's monotonic clock, so a sample is exactly the time from the
producing call to the handler starting on that message: the write, Redis, the consumer's
read, decoding and dispatch. It does not include the up to 1 ms a message waits for its tick.

Per rate: p50 / p99 / max of the samples, the messages that never arrived, and the rate the
producer reached (messages over the time from its first call to the return of its last). A
producer that cannot keep up sends bigger batches, never more than ``BURST_TICKS`` ticks'
worth at once, so a rate it cannot reach shows as a lower 'sent' rate. Between two rates the
producer pauses (``PHASE_PAUSE``) for the consumer to catch up; the first phase's first
messages (connections opened, scripts loaded) are left out of its percentiles.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aioredq import App

from ._app_runs import app_with_handler
from ._common import CHANNEL, QUEUE, STREAM, Tally, body, emit, percentiles

TICK = 0.001  # the producer's clock: every millisecond, one call with what is due
BURST_TICKS = 10  # a producer behind schedule sends at most this many ticks' worth at once
PHASE_PAUSE = 0.05  # between two rates: the consumer catches up


async def latency_consumer(
    url: str, model: str, counts: list[int], timeout: float
) -> dict[str, Any]:
    """Handler-start latency of every message: ``counts[k]`` messages at the k-th rate,
    numbered on from the previous phase."""
    n = sum(counts)
    samples: list[float] = [math.nan] * n
    tally = Tally(n)

    def on_body(received: dict[str, Any]) -> None:
        samples[int(received["seq"])] = time.monotonic() - float(received["ts"])
        tally.hit()

    app = app_with_handler(url, model, on_body)
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


def _sender(app: App, model: str) -> Callable[[int, int], Awaitable[object]]:
    """``send(first, count)``: messages ``first`` to ``first + count - 1`` in one call, each
    body stamped as it is built."""

    async def send(first: int, count: int) -> object:
        monotonic = time.monotonic
        bodies = [body(seq, monotonic()) for seq in range(first, first + count)]
        if model == "task":
            return await app.enqueue_many(QUEUE, bodies)
        if model == "stream":
            return await app.append_many(STREAM, bodies)
        return await app.publish_many(CHANNEL, bodies)

    return send


async def paced(
    first: int, n: int, rate: float, send: Callable[[int, int], Awaitable[object]]
) -> float:
    """Send messages ``first`` to ``first + n - 1`` at ``rate`` per second on an absolute
    schedule (no drift): at every tick, those due so far in one ``send(first, count)``.
    Returns the rate reached."""
    most = max(1, int(rate * TICK * BURST_TICKS))
    start = time.monotonic()
    sent = 0
    while sent < n:
        now = time.monotonic()
        due = min(n, sent + most, int((now - start) * rate) + 1)
        if due > sent:
            await send(first + sent, due - sent)
            sent = due
        if sent < n:
            next_tick = start + (math.floor((now - start) / TICK) + 1) * TICK
            await asyncio.sleep(max(next_tick, start + sent / rate) - time.monotonic())
    elapsed = time.monotonic() - start
    return n / elapsed if elapsed > 0 else 0.0


async def latency_producer(
    url: str, model: str, rates: list[float], counts: list[int]
) -> dict[str, Any]:
    """Each rate in turn (``paced``), with a pause between rates."""
    app = App(url)
    send = _sender(app, model)
    achieved = []
    try:
        await app.connect()
        base = 0
        for rate, count in zip(rates, counts, strict=True):
            if base:
                await asyncio.sleep(PHASE_PAUSE)
            achieved.append(await paced(base, count, rate, send))
            base += count
    finally:
        await app.aclose()
    return {"count": base, "rates": achieved}
