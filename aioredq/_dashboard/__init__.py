"""The dashboard: a web page with every handler's figures, charts and dead letters."""

from __future__ import annotations

from ._asgi import Dashboard

__all__ = ["Dashboard"]
