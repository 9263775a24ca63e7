"""Rate limits: ``rate="100/s"`` (also ``/m``, ``/h``) or ``Rate(100, per=1.0)``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ._exceptions import ConfigurationError

_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` handler starts per ``per`` seconds, across every app."""

    limit: int
    per: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ConfigurationError(f"Rate limit must be an int >= 1, got {self.limit!r}")
        if not isinstance(self.per, int | float) or not 0.001 <= self.per < math.inf:
            raise ConfigurationError(f"Rate per must be seconds >= 0.001, got {self.per!r}")

    @property
    def per_ms(self) -> int:
        return max(1, round(self.per * 1000))


def parse_rate(value: object, where: str) -> Rate | None:
    if value is None or isinstance(value, Rate):
        return value
    if isinstance(value, str) and (match := _TEXT.match(value)):
        return Rate(int(match.group(1)), _PERIODS[match.group(2)])
    raise ConfigurationError(
        f"{where}: rate must be like '100/s', '10/m', '5/h' or aioredq.Rate(100, per=1.0), "
        f"not {value!r}"
    )
