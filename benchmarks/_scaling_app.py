"""The app the ``scaling`` part runs through the real command line
(``python -m aioredq benchmarks._scaling_app:app --url URL --workers N --only NAME ...``):
default options and no-op handlers, as in the other parts.

- ``bench-jobs`` (task) and ``bench-events`` (stream, group ``bench``): the worker-count runs;
- ``CLUSTER_QUEUES``: six task queues whose keys sit two per third of the hash slots, so a
  three-master cluster gives each master two of them.
"""

from __future__ import annotations

import os
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from aioredq import App

from ._common import GROUP, QUEUE, STREAM

URL_ENV = "AIOREDQ_BENCH_URL"
CLUSTER_SHARDS = 3
PER_SHARD = 2


def _spread_queues() -> tuple[str, ...]:
    """``PER_SHARD`` queue names in each third of the slots (the first that fall there)."""
    picked: dict[int, list[str]] = {shard: [] for shard in range(CLUSTER_SHARDS)}
    i = 0
    while any(len(names) < PER_SHARD for names in picked.values()):
        name = f"bench-jobs-{i}"
        shard = key_slot(name.encode()) * CLUSTER_SHARDS // REDIS_CLUSTER_HASH_SLOTS
        if len(picked[shard]) < PER_SHARD:
            picked[shard].append(name)
        i += 1
    return tuple(name for shard in sorted(picked) for name in picked[shard])


CLUSTER_QUEUES = _spread_queues()

# The command line's --url replaces this; the fallback is a port nothing listens on.
app = App(os.environ.get(URL_ENV, "redis://127.0.0.1:1/0"))


@app.task(QUEUE)
async def drain_jobs(body: dict) -> None:
    pass


@app.stream(STREAM, group=GROUP)
async def drain_events(body: dict) -> None:
    pass


def _no_op(queue: str) -> Any:
    async def handler(body: dict) -> None:
        pass

    handler.__name__ = handler.__qualname__ = "drain_" + queue.replace("-", "_")
    return handler


for _queue in CLUSTER_QUEUES:
    app.task(_queue)(_no_op(_queue))
