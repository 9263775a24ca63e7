"""The ticks of a periodic handler: a cron expression parsed by cronsim (five fields, or six
with seconds first) in a time zone, or every so many seconds."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ._exceptions import ConfigurationError


class Schedule:
    """The ticks of a cron expression in a time zone, or of ``every`` seconds (aligned on
    multiples of it since the epoch), as unix times."""

    def __init__(self, cron: str | None, tz: str, every: float | None) -> None:
        self.cron, self.every = cron, every
        self.zone = ZoneInfo(tz)
        if cron is not None:
            CronSim(cron, datetime.now(self.zone))  # refuses bad text at declaration

    def next_after(self, t: float) -> float:
        """The first tick strictly after ``t``."""
        if self.every is not None:
            return (math.floor(t / self.every + 1e-9) + 1) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(t, self.zone)
        return next(iter(CronSim(self.cron, start))).timestamp()

    def latest_at_or_before(self, t: float) -> float:
        if self.every is not None:
            return math.floor(t / self.every + 1e-9) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(t, self.zone) + timedelta(microseconds=1)
        return next(iter(CronSim(self.cron, start, reverse=True))).timestamp()


def check_schedule(cron: object, tz: object, every: object, where: str) -> None:
    """Refuse a bad ``cron`` / ``tz`` / ``every`` combination with one clear error."""
    if cron is not None and every is not None:
        raise ConfigurationError(f"{where}: give cron= or every=, not both")
    if cron is not None and not isinstance(cron, str):
        raise ConfigurationError(f"{where}: cron must be a str like '0 * * * *'")
    if every is not None and (
        isinstance(every, bool) or not isinstance(every, int | float) or not every > 0
    ):
        raise ConfigurationError(f"{where}: every must be a number of seconds > 0")
    if not isinstance(tz, str):
        raise ConfigurationError(f"{where}: tz must be a time zone name like 'UTC'")
    try:
        Schedule(cron, tz, None if every is None else float(every))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"{where}: unknown time zone tz={tz!r} ({exc})") from None
    except CronSimError as exc:
        raise ConfigurationError(f"{where}: cron={cron!r} is not valid: {exc}") from None
