"""The AsyncAPI document: what it says about every model and body kind, and the official
parser (``@asyncapi/parser`` 3, from npm, run by node) finding no error in it (while it does
find errors in a document the spec refuses).

The parser is installed once into ``$AIOREDQ_ASYNCAPI_PARSER_DIR`` (default
``~/.cache/aioredq-tests/asyncapi-parser``); the tests that need it are skipped where node or
npm is missing. One node process checks every document.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from aioredq import App
from aioredq._asyncapi import asyncapi_document
from aioredq._yaml import to_yaml

ROOT = Path(__file__).resolve().parent.parent
PARSE_SCRIPT = Path(__file__).resolve().parent / "asyncapi" / "parse.mjs"
PARSER_DIR = Path(
    os.environ.get("AIOREDQ_ASYNCAPI_PARSER_DIR")
    or Path.home() / ".cache" / "aioredq-tests" / "asyncapi-parser"
)
APPS = {
    "quickstart": "examples.quickstart:app",
    "fastapi_app": "examples.fastapi_app:app",
    "cli_app": "tests.apps.cli_app:app",
    "every_kind": "tests.apps.asyncapi_app:app",
}


def load(spec: str) -> App:
    from aioredq._cli import load_app

    return load_app(spec)


def every_kind() -> dict[str, Any]:
    return asyncapi_document(load(APPS["every_kind"]), title="every kind", version="2.0.0")


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [r for v in value.values() for r in refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOREDQ_")}
    return subprocess.run(
        [sys.executable, "-m", "aioredq", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# what the document says --------------------------------------------------------------------


def test_one_channel_per_queue_stream_channel_and_pattern() -> None:
    channels = every_kind()["channels"]
    names = {(c["x-aioredq"]["kind"], c["x-aioredq"]["name"]) for c in channels.values()}
    assert names == {
        ("queue", "orders"),
        ("queue", "{tenant}jobs"),
        ("queue", "jobs/v1:high"),
        ("queue", "legacy"),
        ("queue", "items"),
        ("queue", "trees"),
        ("queue", "pages"),
        ("queue", "opaque"),
        ("stream", "payments"),
        ("stream", "clicks"),
        ("stream", "pings"),
        ("channel", "numbers"),
        ("channel", "more-numbers"),
        ("pattern", "orders.*.created"),
        ("pattern", "log.?[ab]"),
        ("sharded-channel", "positions"),
    }
    assert channels["queue-orders"]["address"] == "orders"
    assert channels["queue-jobs_v1_high"]["address"] == "jobs/v1:high"
    # Braces would read as a parameter: no address, the name in the description.
    assert channels["queue-_tenant_jobs"]["address"] is None
    assert "'{tenant}jobs'" in channels["queue-_tenant_jobs"]["description"]
    pattern = channels["pattern-orders___created"]
    assert pattern["address"] == "orders.{match1}.created"
    assert set(pattern["parameters"]) == {"match1"}
    classes = channels["pattern-log___ab_"]
    assert classes["address"] is None and "'log.?[ab]'" in classes["description"]
    assert "SSUBSCRIBE" in channels["sharded-channel-positions"]["description"]
    # Two groups on one stream: one channel, a message per handler.
    assert set(channels["stream-payments"]["messages"]) == {"pay", "audit"}
    assert set(channels["channel-numbers"]["messages"]) == {"numbers", "anything"}
    assert all(c["bindings"] == {"redis": {}} for c in channels.values())


def test_one_receive_operation_per_handler_with_its_options() -> None:
    doc = every_kind()
    ops = doc["operations"]
    handlers = {op["x-aioredq"]["handler"] for op in ops.values()}
    assert handlers == {h.name for h in load(APPS["every_kind"]).handlers}
    assert {op["action"] for op in ops.values()} == {"receive"}
    # A handler on two channels: an operation for each (an operation has one channel).
    assert {"numbers-channel-numbers", "numbers-channel-more-numbers"} <= set(ops)
    order = ops["place_order"]
    assert order["summary"] == "Place an order."
    assert order["description"] == "Place an order.\n\nCharges the card, then books the delivery."
    assert order["channel"] == {"$ref": "#/channels/queue-orders"}
    assert (
        order["x-aioredq"].items()
        >= {
            "handler": "place_order",
            "model": "task",
            "queue": "orders",
            "concurrency": 4,
            "max_attempts": 3,
            "lease": 30.0,
            "batch": 100,
        }.items()
    )
    assert order["x-aioredq"]["backoff"]["factor"] == 2.0
    pay = ops["pay"]["x-aioredq"]
    assert (pay["model"], pay["stream"], pay["group"], pay["max_deliveries"], pay["maxlen"]) == (
        "stream",
        "payments",
        "billing",
        2,
        10_000,
    )
    assert ops["clicks"]["x-aioredq"]["group"] is None
    assert ops["positions"]["x-aioredq"]["sharded"] is True
    assert ops["order_events"]["x-aioredq"]["pattern"] == "orders.*.created"
    assert "description" not in ops["raw_job"]  # no docstring
    for op in ops.values():
        (message,) = op["messages"]
        assert message["$ref"].startswith(op["channel"]["$ref"] + "/messages/")


def test_payloads_are_pydantic_schemas_with_constraints_and_shared_definitions() -> None:
    doc = every_kind()
    messages, schemas = doc["components"]["messages"], doc["components"]["schemas"]
    payload = {name: m["payload"] for name, m in messages.items()}
    assert payload["tenant_job"] == {"type": "string"}
    assert messages["tenant_job"]["contentType"] == "text/plain"
    assert payload["raw_job"]["type"] == "string"
    assert messages["raw_job"]["contentType"] == "application/octet-stream"
    assert payload["numbers"] == {"type": "array", "items": {"type": "integer"}}
    assert payload["anything"] == {} and payload["clicks"] == {}
    assert payload["audit"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert payload["ping"] == {"$ref": "#/components/schemas/Ping"}  # a dataclass
    assert schemas["Ping"]["properties"]["port"]["default"] == 6379
    # Tuples in draft-07 words.
    assert payload["positions"]["items"] == [{"type": "number"}, {"type": "number"}]
    assert "prefixItems" not in payload["positions"]
    order = schemas["Order"]
    assert payload["place_order"] == {"$ref": "#/components/schemas/Order"}
    assert order["description"] == "An order placed by a customer."
    assert order["properties"]["items"]["minItems"] == 1
    assert order["properties"]["ship_to"] == {"$ref": "#/components/schemas/Address"}
    assert schemas["Address"]["properties"]["postcode"]["pattern"] == "^[0-9]{5}$"
    assert schemas["Address"]["properties"]["street"]["maxLength"] == 200
    item_ref = order["properties"]["items"]["items"]["$ref"]
    item = resolve(doc, item_ref)
    assert item["properties"]["quantity"] == {
        "exclusiveMinimum": 0,
        "maximum": 1000,
        "title": "Quantity",
        "type": "integer",
    }
    assert schemas["Colour"]["enum"] == ["red", "green"]
    # Two models named Item: two distinct definitions.
    legacy = resolve(doc, payload["legacy"]["$ref"])
    assert set(legacy["properties"]) == {"code"}
    assert payload["legacy"] != payload["item"]
    assert resolve(doc, payload["item"]["$ref"]) == item
    # The discriminated union keeps its oneOf; the OpenAPI-style discriminator object (which
    # the AsyncAPI schema refuses) is gone.
    method = schemas["Payment"]["properties"]["method"]
    assert [r["$ref"] for r in method["oneOf"]] == [
        "#/components/schemas/Card",
        "#/components/schemas/Transfer",
    ]
    assert "discriminator" not in json.dumps(doc)
    # Recursive and generic models.
    assert payload["tree"] == {"$ref": "#/components/schemas/Tree"}
    children = schemas["Tree"]["properties"]["children"]
    assert children["items"] == {"$ref": "#/components/schemas/Tree"}
    page = resolve(doc, payload["page"]["$ref"])
    assert resolve(doc, page["properties"]["items"]["items"]["$ref"]) == item
    # pydantic cannot describe it: the payload says so, the rest of the document is whole.
    (opaque,) = [h.body_type for h in load(APPS["every_kind"]).handlers if h.name == "opaque"]
    assert opaque.__name__ == "Opaque"
    assert payload["opaque"] == {"description": f"pydantic has no JSON Schema for {opaque!r}"}
    # Every reference resolves, none into pydantic's $defs.
    for ref in refs(doc):
        assert not ref.startswith("#/$defs"), ref
        resolve(doc, ref)
    assert "$defs" not in json.dumps(doc)


def test_info_servers_and_no_password() -> None:
    doc = every_kind()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"] == {"title": "every kind", "version": "2.0.0"}
    assert doc["servers"] == {
        "redis": {
            "host": "redis.example.com:6380",
            "protocol": "redis",
            "description": "Redis server, database 3",
            "bindings": {"redis": {}},
        }
    }
    assert "s3cret" not in json.dumps(doc)
    defaults = asyncapi_document(load(APPS["every_kind"]))
    assert defaults["info"] == {"title": "tests.apps.asyncapi_app", "version": "0.1.0"}


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("memory://", None),
        (
            "rediss://:hunter2@[::1]:7000/0",
            {"redis": {"host": "[::1]:7000", "protocol": "rediss"}},
        ),
        (
            "redis+cluster://u:hunter2@a:7000,b:7001",
            {
                "redis-0": {"host": "a:7000", "protocol": "redis"},
                "redis-1": {"host": "b:7001", "protocol": "redis"},
            },
        ),
        (
            "unix:///run/redis.sock?db=2&password=hunter2",
            {"redis": {"host": "localhost", "pathname": "/run/redis.sock"}},
        ),
        (
            "redis+sentinel://:hunter2@s1:26379,s2:26380/mymaster/1?sentinel_password=hunter2",
            {
                "redis-0": {
                    "host": "s1:26379",
                    "description": "Redis Sentinel (master 'mymaster'), database 1",
                },
                "redis-1": {"host": "s2:26380"},
            },
        ),
    ],
)
def test_servers_from_the_url(url: str, servers: dict[str, Any] | None) -> None:
    app = App(url)

    @app.task("q")
    async def job(body: str) -> None:
        pass

    doc = asyncapi_document(app)
    text = json.dumps(doc)
    assert "hunter2" not in text
    if servers is None:
        assert "servers" not in doc
        assert "memory://" in doc["info"]["description"]
        return
    assert set(doc["servers"]) == set(servers)
    for name, fields in servers.items():
        assert doc["servers"][name].items() >= fields.items()


class Body(BaseModel):
    n: int = Field(ge=0)


def test_deterministic_whatever_the_declaration_order() -> None:
    def build(reverse: bool) -> str:
        app = App("memory://")

        async def a(body: Body) -> None:
            pass

        async def b(body: list[Body]) -> None:
            pass

        async def c(body: str) -> None:
            pass

        declare = [
            lambda: app.task("q1")(a),
            lambda: app.stream("s1")(b),
            lambda: app.subscribe("c1", "c0")(c),
        ]
        for step in reversed(declare) if reverse else declare:
            step()
        return json.dumps(asyncapi_document(app, title="t"), indent=2)

    assert build(False) == build(True)


def test_an_app_without_handlers_is_still_a_document() -> None:
    doc = asyncapi_document(App("memory://"))
    assert doc["channels"] == {} and doc["operations"] == {}
    assert doc["info"]["title"] == "aioredq app"


# YAML ---------------------------------------------------------------------------------------

TRICKY: dict[str, Any] = {
    "plain": "just words",
    "reserved": ["yes", "No", "on", "null", "~", "true", "1.0", "0x1F", "-1", ".inf", ""],
    "marks": ["a: b", "#hash", "- dash", "[x]", "{y}", "*star", "&amp", "!tag", "|", ">", "%", "@"],
    "quotes": ["it's", 'say "hi"', "back\\slash", " lead", "trail ", "tab\there"],
    "lines": "one\ntwo\r\nthree\u2028four",
    "unicode": "café ☕ 🍰 \x85 \u00a0 \ufeff \x7f \x1b",
    "numbers": [0, -3, 2.5, 1e100, -0.0, True, False, None],
    "nested": [[1, [2, []]], {}, [], {"k": {"x": [{"a": 1, "b": [{}]}]}}],
    "keys": {"$ref": 1, "x-aioredq": 2, "1": 3, "a b": 4, "null": 5, "é": 6, "": 7},
}


def test_yaml_is_block_yaml() -> None:
    text = to_yaml({"a": {"b": [1, {"c": "d", "e": []}]}, "f": "#/x"})
    assert text == 'a:\n  b:\n  - 1\n  - c: d\n    e: []\nf: "#/x"\n'


def test_docs_command_prints_json_and_writes_yaml(tmp_path: Path) -> None:
    url = "redis://:hunter2@elsewhere:7777/5"
    done = run_cli("docs", APPS["every_kind"], "--title", "T", "--version", "9", "--url", url)
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout
    doc = json.loads(done.stdout)
    expected = asyncapi_document(load(APPS["every_kind"]), title="T", version="9")
    assert doc.pop("servers")["redis"]["host"] == "elsewhere:7777"
    expected.pop("servers")
    assert doc == expected
    out = tmp_path / "doc.yaml"
    done = run_cli("docs", APPS["quickstart"], "--yaml", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    text = out.read_text()
    assert text == to_yaml(asyncapi_document(load(APPS["quickstart"]), title="examples.quickstart"))
    assert text.startswith('asyncapi: "3.0.0"\ninfo:\n  title: examples.quickstart\n')


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["docs"], "the following arguments are required: MODULE:ATTR"),
        (["docs", "nomodule"], "expected MODULE:ATTR"),
        (["docs", "tests.apps.cli_app:not_an_app"], "is not an aioredq.App"),
        (["docs", APPS["cli_app"], "--bogus"], "unrecognized arguments: --bogus"),
        (["docs", APPS["cli_app"], "--out", "/nonexistent/dir/x.json"], "cannot write"),
    ],
)
def test_docs_command_bad_arguments(args: list[str], error: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aioredq: error: ") and error in lines[0], lines[0]
    assert done.stdout == ""


# the official parser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi_parser() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(
            "node and npm are needed to run the official AsyncAPI parser (npm package "
            "@asyncapi/parser); install them, e.g. apt-get install nodejs npm"
        )
    PARSER_DIR.mkdir(parents=True, exist_ok=True)
    marker = PARSER_DIR / "node_modules" / "@asyncapi" / "parser" / "package.json"
    # One installation for every test process at once.
    with open(PARSER_DIR / ".install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            done = subprocess.run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(PARSER_DIR),
                    "--no-audit",
                    "--no-fund",
                    "@asyncapi/parser@3",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if done.returncode != 0 or not marker.exists():
                pytest.fail(
                    f"npm install @asyncapi/parser@3 into {PARSER_DIR} failed:\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
                )
    return PARSER_DIR


def run_parser(parser_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(PARSE_SCRIPT), str(parser_dir)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_official_parser_finds_no_error(asyncapi_parser: Path) -> None:
    documents: dict[str, str] = {}
    expected_yaml: dict[str, Any] = {"tricky": TRICKY}
    for name, spec in APPS.items():
        doc = asyncapi_document(load(spec))
        documents[f"{name}.json"] = json.dumps(doc)
        documents[f"{name}.yaml"] = to_yaml(doc)
        expected_yaml[name] = doc
    # A document the spec refuses, to show that the check is not vacuous.
    bad = asyncapi_document(load(APPS["quickstart"]))
    bad["operations"]["notify"]["action"] = "consume"
    del bad["info"]["version"]
    documents["refused.json"] = json.dumps(bad)
    yaml_texts = {name: to_yaml(value) for name, value in expected_yaml.items()}
    result = run_parser(asyncapi_parser, {"documents": documents, "yaml": yaml_texts})

    assert set(result["documents"]) == set(documents)
    errors = {
        name: [d for d in diagnostics if d["severity"] == "error"]
        for name, diagnostics in result["documents"].items()
    }
    assert errors.pop("refused.json"), result["documents"]["refused.json"]
    assert errors == {name: [] for name in errors}, json.dumps(errors, indent=2)
    # The YAML reads back, through another implementation, as the very data it was made of.
    assert result["yaml"] == json.loads(json.dumps(expected_yaml))
