"""A handler declared with ``@app.task`` without its parentheses (and so without a queue)."""

from __future__ import annotations

from aioredq import App

app = App()


@app.task  # type: ignore[arg-type]
async def send_email(body: str) -> None: ...
