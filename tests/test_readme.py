"""The README's "Testing your handlers" example runs as written, so it cannot go stale."""

from __future__ import annotations

import asyncio
import re
import types
from pathlib import Path

from aioredq import Message

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


async def test_the_middleware_example_runs() -> None:
    [code, *_] = python_blocks(section("Middleware and tracing"))
    module = types.ModuleType("readme_middleware_example")
    exec(compile(code, f"{README}:Middleware and tracing", "exec"), module.__dict__)
    app = module.app
    seen: list[tuple[str, str | None]] = []

    @app.task("readme-mw", max_attempts=5)
    async def job(body: str, message: Message) -> None:
        seen.append((body, message.headers.get("tenant")))
        if body == "permanent":
            raise module.PermanentError("cannot ever work")

    async with app:
        await app.enqueue("readme-mw", "fine")
        await app.enqueue("readme-mw", "permanent")
        for _ in range(2000):
            if app.stats().handlers["job"].dead_lettered:
                break
            await asyncio.sleep(0.01)
    assert sorted(seen) == [("fine", "acme"), ("permanent", "acme")]  # rejected, not retried
    assert app.stats().handlers["job"].dead_lettered == 1
