"""``aioredq.__all__`` is the public API: sorted, complete and importable."""

from __future__ import annotations

import importlib
import types

import aioredq


def test_all_is_sorted() -> None:
    assert aioredq.__all__ == sorted(aioredq.__all__)


def test_every_exported_name_is_importable() -> None:
    for name in aioredq.__all__:
        assert hasattr(aioredq, name), name
        namespace: dict[str, object] = {}
        exec(f"from aioredq import {name}", namespace)
        assert namespace[name] is getattr(aioredq, name)


def test_no_public_name_is_missing_from_all() -> None:
    public = {
        name
        for name, value in vars(aioredq).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and value is not importlib.import_module("__future__").annotations
    }
    assert public == set(aioredq.__all__) - {"__version__"}


def test_binding_names_are_exported() -> None:
    binding = {
        "App",
        "Message",
        "Retry",
        "Reject",
        "Backoff",
        "AioredqError",
        "ConfigurationError",
        "MessageTooLarge",
        "__version__",
    }
    assert binding <= set(aioredq.__all__)


def test_errors_form_one_tree() -> None:
    for name in aioredq.__all__:
        value = getattr(aioredq, name)
        if isinstance(value, type) and issubclass(value, Exception):
            # Retry, Reject and RateLimited are control flow raised by handlers, not errors
            # aioredq raises.
            if value in (aioredq.Retry, aioredq.Reject, aioredq.RateLimited):
                continue
            assert issubclass(value, aioredq.AioredqError), name


def test_version_is_a_string() -> None:
    assert isinstance(aioredq.__version__, str) and aioredq.__version__
