"""Each handler option is declared once (aioredq._options); the decorators' keyword
parameters, the specs and the README's option table are held to those declarations."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from aioredq import App, Backoff
from aioredq._handlers import StreamSpec, SubscribeSpec, TaskSpec
from aioredq._options import OPTIONS, Option

README = Path(__file__).resolve().parent.parent / "README.md"
DECORATORS = {"task": App.task, "stream": App.stream, "subscribe": App.subscribe}
SPECS = {"task": TaskSpec, "stream": StreamSpec, "subscribe": SubscribeSpec}
KEYS = {"task": "queue", "stream": "stream", "subscribe": "channels"}


@pytest.mark.parametrize("kind", sorted(OPTIONS))
def test_the_decorator_spells_out_exactly_the_declared_options(kind: str) -> None:
    params = [
        p
        for p in inspect.signature(DECORATORS[kind]).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    declared = OPTIONS[kind]
    assert [p.name for p in params] == [o.name for o in declared]
    for param, option in zip(params, declared, strict=True):
        assert param.default == option.default, option.name
        assert param.annotation == option.type, option.name


@pytest.mark.parametrize("kind", sorted(OPTIONS))
def test_the_spec_holds_exactly_the_declared_options(kind: str) -> None:
    fields = [f.name for f in dataclasses.fields(SPECS[kind])]
    assert fields[0] == KEYS[kind]
    assert sorted(fields[1:]) == sorted(o.name for o in OPTIONS[kind])


@pytest.mark.parametrize("kind", sorted(OPTIONS))
def test_a_handler_declared_without_options_gets_the_declared_defaults(kind: str) -> None:
    app = App("memory://")

    async def handle(body: object) -> None: ...

    handler = getattr(app, f"add_{kind}")(handle, "k")
    for option in OPTIONS[kind]:
        assert getattr(handler.spec, option.name) == option.default, option.name


def _readme_rows() -> dict[str, tuple[set[str], str]]:
    """{option name: (handler kinds named in its row, default cell)} of the README table."""
    text = README.read_text()
    start = text.index("| option | handlers | default | meaning |")
    rows: dict[str, tuple[set[str], str]] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        names, kinds, default, _meaning = (cell.strip() for cell in line.strip("|").split("|"))
        named = set(re.findall(r"`(\w+)`", names))
        which = set(OPTIONS) if kinds == "all" else set(re.findall(r"\w+", kinds))
        for name in named:
            rows[name] = (which, default)
    return rows


def _shown(option: Option) -> str:
    value = option.default
    if isinstance(value, Backoff):
        return f"Backoff({value.base:g}, {value.factor:g}, {value.cap:g}, jitter={value.jitter})"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def test_the_readme_option_table_matches_the_declarations() -> None:
    rows = _readme_rows()
    declared = {o.name for options in OPTIONS.values() for o in options}
    assert set(rows) == declared
    for kind, options in OPTIONS.items():
        for option in options:
            kinds, default = rows[option.name]
            assert kind in kinds, (option.name, kind)
            assert _shown(option) in default, (option.name, default)
