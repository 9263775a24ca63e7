"""A module whose handler is declared wrongly (a synchronous function)."""

from __future__ import annotations

from aioredq import App

app = App()


@app.task("jobs")  # type: ignore[arg-type]
def not_async(body: str) -> None: ...
