"""The app of the dashboard's pause and schedule tests, ``tests.apps.dashboard_periodic_app:app``:
a task handler that pushes each body to the list ``handled``, and a periodic one every second.
"""

from __future__ import annotations

from datetime import datetime

from aioredq import App

app = App(shutdown_timeout=2)


@app.task("dash-work", lease=2)
async def work(body: str) -> None:
    await app.connection.command.rpush("handled", body)


@app.task("dash-ticks", every=1, lease=2)
async def tick(at: datetime) -> None:
    await app.connection.command.rpush("ticked", at.isoformat())
