"""The CLI's event loop: uvloop when installed (``aioredq[fast]``), unless told otherwise."""

from __future__ import annotations

import asyncio

import pytest

from aioredq._loop import loop_name, run

uvloop = pytest.importorskip("uvloop")


async def _running_loop() -> type:
    return type(asyncio.get_running_loop())


def test_uvloop_is_used_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIOREDQ_LOOP", raising=False)
    assert loop_name() == "uvloop"
    assert run(_running_loop()) is uvloop.Loop


def test_the_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOREDQ_LOOP", "asyncio")
    assert loop_name() == "asyncio"
    assert run(_running_loop()) is not uvloop.Loop
