"""The package's imports point down (CLI -> App -> consumers -> transports -> connection) and
never go round in a circle, type-only and function-local imports included; and its units stay
small: no class over 300 lines, no function over 60."""

from __future__ import annotations

import ast
from pathlib import Path

import aioredq

PACKAGE = Path(aioredq.__file__).parent

# Higher layers may import lower ones, never the reverse. A module not listed (a new one)
# is held to the no-circle rule only.
LAYERS: dict[int, set[str]] = {
    4: {
        *("__main__", "_cli", "_inspect", "_dead", "_metrics", "_acl", "testing", "_supervisor"),
        *("_dashboard", "_asyncapi", "_yaml", "otel"),
    },
    3: {"__init__", "_app", "_runner", "_producer", "_registry", "_observer"},
    2: {
        "_task",
        "_stream",
        "_subscribe",
        "_consumer",
        "_calls",
        "_decisions",
        "_outcomes",
        "_group_checks",
        "_orphans",
        "_task_wait",
        "_task_cancels",
        "_task_letters",
        "_stream_claims",
        "_stream_outcomes",
        "_pool",
        "_startup",
        "_handlers",
        "_options",
        "_outage",
        "_stats",
        "_middleware",
        "_schedule",
        "_cron",
    },
    1: {"_transports"},
    0: {
        "_connection",
        "_url",
        "_exceptions",
        "_codec",
        "_backoff",
        "_message",
        "_logging",
        "_rate",
    },
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, wherever the import statement stands."""
    name = _module_name(path)
    package = name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.split(".")[0] == "aioredq":
                    base = node.module.split(".")[1:]
                else:
                    continue
            else:
                up = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = [*up, *(node.module.split(".") if node.module else [])]
            target = ".".join(base) or "__init__"
            found.add(target)
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target != "__init__" else alias.name
                if (PACKAGE / f"{sub.replace('.', '/')}.py").exists():
                    found.add(sub)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "aioredq":
                    found.add(".".join(alias.name.split(".")[1:]) or "__init__")
    found.discard(name)
    return {m for m in found if _exists(m)}


def _exists(module: str) -> bool:
    path = PACKAGE / module.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


# The one import that points up, on purpose: ``App.dashboard()`` (a binding name) hands the app
# to the dashboard, which sits above App like the CLI; it loads on the first call only.
UPWARD_ON_PURPOSE = {("_app", "_dashboard")}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        name = name.removesuffix(".__init__") if name != "__init__" else name
        graph[name] = {t for t in _imports(path) if (name, t) not in UPWARD_ON_PURPOSE}
    return graph


def _layer(module: str) -> int | None:
    top = module.split(".")[0]
    for layer, members in LAYERS.items():
        if top in members or module in members:
            return layer
    return None


def test_the_import_graph_is_read_from_the_sources() -> None:
    graph = _graph()
    assert "_app" in graph["__init__"]
    assert "_runner" in graph["_app"]
    assert "_connection" in graph["_outage"]
    assert "_transports.keys" in graph["_transports.queue"]


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in targets
        if (low := _layer(module)) is not None
        and (high := _layer(target)) is not None
        and high > low
        and target != "__init__"
    ]
    assert upward == []


def test_the_imports_have_no_circle() -> None:
    graph = _graph()
    # __init__ of a package runs before its modules: importing the package itself from a
    # module below it is how Python spells "my package" and is not a circle of ours.
    # Likewise a package's module importing its own package (``from . import _letters``).
    edges = {
        m: {t for t in ts if t != "__init__" and not m.startswith(t + ".")}
        for m, ts in graph.items()
    }
    circles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_a_circle_or_an_upward_import_would_be_seen() -> None:
    assert _layer("_cli") == 4 and _layer("_connection") == 0
    assert _layer("_transports.queue") == 1


# No raw client outside the transports and the connection: the layers above hand the
# ``Connection`` (or a transport) around, and only transports pick its clients.
CLIENT_ROLES = {"command", "bookkeeping", "blocking"}
CONNECTION_NAMES = {"conn", "connection", "_conn"}


def _connection_api() -> set[str]:
    """What ``Connection`` offers besides its clients: its public methods, properties and
    attributes, read from its class."""
    tree = ast.parse((PACKAGE / "_connection.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Connection"]
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "self" and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if not n.startswith("_")} - CLIENT_ROLES


def _is_connection(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in CONNECTION_NAMES
    return isinstance(node, ast.Attribute) and node.attr in CONNECTION_NAMES


def _client_uses(source: str, api: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        if node.attr in CLIENT_ROLES:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif _is_connection(node.value) and node.attr not in api:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def _above_the_transports() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in ("_transports", "_connection.py")
    ]


def test_no_raw_client_leaves_the_transports_and_the_connection() -> None:
    api = _connection_api()
    uses = {
        str(path.relative_to(PACKAGE)): found
        for path in _above_the_transports()
        if (found := _client_uses(path.read_text(), api))
    }
    assert uses == {}


def test_a_raw_client_above_the_transports_would_be_seen() -> None:
    api = _connection_api()
    assert {"produce", "can_block", "aclose", "target"} <= api
    assert not api & CLIENT_ROLES
    assert len(_above_the_transports()) > 30
    assert all("_transports" not in p.parts for p in _above_the_transports())
    bad = """
client = app.connection.command
await self.conn.bookkeeping.set(key, "1")
reader = conn.blocking
await app.connection.get(key)
await self.conn.xadd(key, fields)
await connection.delete(key)
"""
    assert len(_client_uses(bad, api)) == 6
    good = """
conn = app.connection
await conn.produce("pause", lambda: admin.pause(conn, key))
if self.conn.can_block and app.connection.is_open:
    await QueueTransport.for_consumer(self.conn, queue, consumer).wait(1.0)
"""
    assert _client_uses(good, api) == []


MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60


def _oversized(source: str) -> list[str]:
    """Classes over ``MAX_CLASS_LINES`` and functions (methods and nested ones included) over
    ``MAX_FUNCTION_LINES`` in ``source``, decorators not counted."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            limit = MAX_FUNCTION_LINES
        else:
            continue
        assert node.end_lineno is not None
        lines = node.end_lineno - node.lineno + 1
        if lines > limit:
            found.append(f"{node.name}: {lines} lines")
    return found


def test_no_class_or_function_is_too_long() -> None:
    oversized = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := _oversized(path.read_text()))
    }
    assert oversized == {}


def test_a_too_long_class_or_function_would_be_seen() -> None:
    def function(name: str, lines: int, indent: str = "") -> str:
        return f"{indent}def {name}():\n" + f"{indent}    x = 1\n" * (lines - 1)

    def cls(methods: int) -> str:  # 1 + 10 lines a method
        return "class C:\n" + function("m", 10, "    ") * methods

    assert _oversized(function("f", 60) + cls(29)) == []
    assert _oversized(function("f", 61)) == ["f: 61 lines"]
    assert _oversized("async " + function("g", 62)) == ["g: 62 lines"]
    assert _oversized("class K:\n" + function("m", 61, "    ")) == ["m: 61 lines"]
    assert _oversized(function("outer", 5) + function("inner", 61, "    ")) == [
        "outer: 66 lines",
        "inner: 61 lines",
    ]
    assert _oversized(cls(30)) == ["C: 301 lines"]
