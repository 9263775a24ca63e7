"""The app the dashboard tests run as ``tests.apps.dashboard_app:app``.

A task body starting with ``fail`` is dead-lettered while the file named by
``$DASHBOARD_APP_FAIL`` exists; every handled body is appended as a line to the file named by
``$DASHBOARD_APP_OUT``.
"""

from __future__ import annotations

import os
from typing import Any

from aioredq import App, Reject

app = App()
QUEUE, STREAM, GROUP = "dash-jobs", "dash-events", "dash-group"


def _record(body: Any) -> None:
    path = os.environ.get("DASHBOARD_APP_OUT")
    if path:
        with open(path, "a") as out:
            out.write(f"{body}\n")


def _failing() -> bool:
    path = os.environ.get("DASHBOARD_APP_FAIL")
    return bool(path) and os.path.exists(str(path))


@app.task(QUEUE, concurrency=4)
async def job(body: str) -> None:
    if body.startswith("fail") and _failing():
        raise Reject("refused while failing is on")
    _record(body)


@app.stream(STREAM, group=GROUP)
async def event(body: dict[str, str]) -> None:
    _record(body.get("n", ""))
