"""Waiting in tests: poll a condition until it holds, failing with a clear message after a
generous deadline (the machine may be slow and shared; nothing here measures speed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

WAIT = 20.0


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def until_redis(read: Callable[[], Awaitable[Any]], expected: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while (value := await read()) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT:.0f} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.02)
