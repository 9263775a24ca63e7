"""A periodic task for the once-per-tick tests: every PERIODIC_EVERY seconds (default 1).

Each run appends ``<tick ISO time>|<pid>|<ms late: enqueued_at - tick>`` to the list ``ticks``.
"""

from __future__ import annotations

import os
from datetime import datetime

from aioredq import App, Message

app = App(shutdown_timeout=2)


@app.task("periodic", every=float(os.environ.get("PERIODIC_EVERY", "1")), lease=2)
async def tick(at: datetime, message: Message) -> None:
    assert message.enqueued_at is not None
    late = (message.enqueued_at - at).total_seconds() * 1000
    await app.connection.command.rpush("ticks", f"{at.isoformat()}|{os.getpid()}|{late:.3f}")
