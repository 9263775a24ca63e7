"""The ``webapp`` part: producing the way a web app does, one call per message from many
concurrent requests, no batching.

``CALLERS`` (1,000) coroutines share a counter and each makes one producing call per message
until ``n`` messages are written:

- aioredq: ``app.enqueue(queue, body)`` (tasks, the envelope the app really writes) or
  ``app.append(stream, body)``, an ``App`` with its default options, so its bounded producing
  pool (``App(max_connections=...)``, 50 calls in flight) queues the callers;
- raw: redis-py over a ``BlockingConnectionPool`` of that same size, ``LPUSH`` of
  ``json.dumps(body)`` or ``XADD`` of the body's fields.

Both start from the same Python dicts. Timed from the first call to the last reply.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._common import QUEUE, STREAM, body

CALLERS = 1000


def default_pool_size() -> int:
    """``App(max_connections=...)``'s default: the producing calls aioredq has in flight."""
    from aioredq import App

    default: int = inspect.signature(App).parameters["max_connections"].default
    return default


async def _callers(n: int, callers: int, call: Callable[[int], Awaitable[object]]) -> None:
    numbers = itertools.count()

    async def caller() -> None:
        while (i := next(numbers)) < n:
            await call(i)

    await asyncio.gather(*(caller() for _ in range(callers)))


async def produce(
    impl: str, url: str, model: str, n: int, callers: int, pool: int
) -> dict[str, Any]:
    bodies = [body(i) for i in range(n)]
    if impl == "aioredq":
        from aioredq import App

        app = App(url)
        await app.connect()
        call: Callable[[int], Awaitable[object]] = (
            (lambda i: app.enqueue(QUEUE, bodies[i]))
            if model == "task"
            else (lambda i: app.append(STREAM, bodies[i]))
        )
        close: Callable[[], Awaitable[None]] = app.aclose
    else:
        import redis.asyncio as aioredis

        blocking = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool, socket_timeout=None
        )
        client = aioredis.Redis(connection_pool=blocking)
        await client.ping()
        call = (
            (lambda i: client.lpush(QUEUE, json.dumps(bodies[i])))
            if model == "task"
            else (lambda i: client.xadd(STREAM, bodies[i]))  # type: ignore[arg-type]
        )
        close = client.aclose
    try:
        cpu = time.process_time()
        started = time.perf_counter()
        await _callers(n, callers, call)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await close()
    return {
        "count": n,
        "elapsed_s": elapsed,
        "rate": n / elapsed,
        "cpu_us_per_msg": cpu / n * 1e6,
        "callers": callers,
        "pool": pool,
    }
