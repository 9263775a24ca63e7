"""What the measured processes share: names, bodies, memory readings and the result protocol.

A measured process prints ``READY`` once it can take messages (pub/sub subscribers and latency
consumers must be listening before anyone publishes) and then one ``RESULT {json}`` line.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis

QUEUE = "bench-jobs"
STREAM = "bench-events"
GROUP = "bench"
CHANNEL = "bench-notice"
PAD = "x" * 40
MODELS = ("stream", "task", "pubsub")
# A subscriber that has heard nothing for this long after its first message assumes the
# publisher is done (whatever did not arrive by then counts as dropped).
IDLE_END = 2.0
SETTLE_POLL = 0.001


def body(seq: int, ts: float = 0.0) -> dict[str, Any]:
    """One message: a small JSON object (~70 bytes), as most users send."""
    return {"seq": seq, "ts": ts, "pad": PAD}


def memory_kb(field: str) -> int:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, in KiB, from /proc."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def emit(tag: str, payload: object | None = None) -> None:
    print(tag if payload is None else f"{tag} {json.dumps(payload)}", flush=True)


def raw_client(url: str) -> aioredis.Redis:
    """The fastest honest redis-py client: no socket timeout (a finite one costs ~40 %)."""
    return aioredis.Redis.from_url(url, socket_timeout=None)


async def wait_settled(probe: aioredis.Redis, model: str) -> None:
    """Poll until every message is acknowledged: the queue and every processing list are
    empty (task), or the group has nothing pending (stream)."""
    while True:
        if model == "stream":
            pending = await probe.xpending(STREAM, GROUP)
            if int(pending["pending"]) == 0:
                return
        else:
            lists = [QUEUE, *await probe.keys(f"{{{QUEUE}}}:processing:*")]
            pipe = probe.pipeline(transaction=False)
            for key in lists:
                pipe.llen(key)
            if not any(await pipe.execute()):
                return
        await asyncio.sleep(SETTLE_POLL)


class Tally:
    """Counts what a handler saw and when, the same way for aioredq and the raw loops."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu_first = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        now = time.perf_counter()
        if not self.seen:
            self.first = now
            self.cpu_first = time.process_time()
        self.last = now
        self.seen += 1
        if self.seen >= self.expected:
            self.done.set()

    async def wait_stream_end(self, deadline: float) -> None:
        """Until every message arrived, or the stream of messages dried up (pub/sub)."""
        while not self.done.is_set():
            now = time.perf_counter()
            if now > deadline or (self.seen and now - self.last > IDLE_END):
                return
            try:
                await asyncio.wait_for(self.done.wait(), 0.05)
            except TimeoutError:
                pass

    def cpu_us_per_message(self) -> float:
        """CPU time this process spent per message since the first one: unlike msg/s it
        hardly moves when other processes compete for the cores."""
        return (time.process_time() - self.cpu_first) / self.seen * 1e6 if self.seen else 0.0

    def rate_over_span(self) -> float:
        span = self.last - self.first
        return self.seen / span if span > 0 else 0.0


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 / p99 / max in milliseconds."""
    if not samples:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "p50_ms": ordered[n // 2] * 1000,
        "p99_ms": ordered[min(n - 1, (n * 99) // 100)] * 1000,
        "max_ms": ordered[-1] * 1000,
    }
