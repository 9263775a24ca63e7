"""An app without handlers: a worker has nothing to run."""

from __future__ import annotations

from aioredq import App

app = App()
