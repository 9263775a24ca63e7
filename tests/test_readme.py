"""The README's "Testing your handlers" example runs as written, so it cannot go stale."""

from __future__ import annotations

import re
import types
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


async def test_the_testing_example_runs() -> None:
    [code] = python_blocks(section("Testing your handlers"))
    module = types.ModuleType("readme_testing_example")
    exec(compile(code, f"{README}:Testing your handlers", "exec"), module.__dict__)
    tests = [value for name, value in vars(module).items() if name.startswith("test_")]
    assert tests, "the example defines no test"
    for test in tests:
        await test()
    assert module.sent == ["a@example.com"]
