"""Per-handler counters and handler latency, and their typed snapshot (``app.stats()``)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Latency:
    """Handler run time in seconds over the last ``count`` (at most 4096) runs."""

    count: int
    mean: float
    p50: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class HandlerStats:
    name: str
    kind: str
    key: str
    received: int
    succeeded: int
    failed: int
    retried: int
    dead_lettered: int
    dropped: int
    latency: Latency
    timed_out: int = 0
    cancelled: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    handlers: dict[str, HandlerStats]

    def __getitem__(self, name: str) -> HandlerStats:
        return self.handlers[name]


@dataclass(slots=True)
class Counters:
    """Mutable counters owned by one handler's consumer; only the event loop touches them."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    timed_out: int = 0
    cancelled: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def snapshot(self, name: str, kind: str, key: str) -> HandlerStats:
        runs = sorted(self.latencies)
        n = len(runs)
        latency = Latency(
            count=n,
            mean=sum(runs) / n if n else 0.0,
            p50=runs[n // 2] if n else 0.0,
            p99=runs[min(n - 1, (n * 99) // 100)] if n else 0.0,
            max=runs[-1] if n else 0.0,
        )
        return HandlerStats(
            name=name,
            kind=kind,
            key=key,
            received=self.received,
            succeeded=self.succeeded,
            failed=self.failed,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
            dropped=self.dropped,
            latency=latency,
            timed_out=self.timed_out,
            cancelled=self.cancelled,
        )
