"""A rate-limited task and stream group for the rate tests across worker processes.

Run: ``python -m aioredq tests.apps.rate_app:app --url URL --only rated`` (or ``rated-s``). The
rate is RATE_PER_S starts a second (default 50). Every handler start appends its unix time to
the list ``starts`` as ``<unix time> <pid>``.
"""

from __future__ import annotations

import os
import time

from aioredq import App, Rate

RATE = int(os.environ.get("RATE_PER_S", "50"))
app = App(shutdown_timeout=2)


async def record() -> None:
    await app.connection.command.rpush("starts", f"{time.time()!r} {os.getpid()}")


@app.task("rated", rate=f"{RATE}/s", concurrency=8)
async def job(body: int) -> None:
    await record()


@app.stream("rated-s", group="g", rate=Rate(RATE, per=1.0), start="earliest", concurrency=8)
async def entry(body: dict) -> None:  # type: ignore[type-arg]
    await record()
