"""Retry delays."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._exceptions import ConfigurationError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: attempt ``n`` waits ``min(cap, base * factor**(n-1))`` seconds.

    With ``jitter`` the wait is drawn uniformly from the upper half of that value ("equal
    jitter"), so retries of many failed messages spread out but still grow.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        for name in ("base", "factor", "cap"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigurationError(f"Backoff {name} must be a finite number, got {value!r}")
        if self.base < 0 or self.cap < 0:
            raise ConfigurationError("Backoff base and cap must be >= 0")
        if self.factor < 1:
            raise ConfigurationError("Backoff factor must be >= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = max(attempt - 1, 0)
        try:
            raw = self.base * self.factor**exponent
        except OverflowError:
            raw = self.cap
        wait = min(self.cap, raw)
        if self.jitter:
            wait = random.uniform(wait / 2, wait)
        return wait
