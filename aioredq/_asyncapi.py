"""The app as an AsyncAPI 3.0.0 document: channels, receive operations, payload schemas.

One channel per queue, stream, pub/sub channel (plain or sharded) and pattern; one receive
operation per handler (per handler and channel for a handler on several channels); one message
per handler whose payload is pydantic's JSON Schema of the body annotation. Reusable schemas
(pydantic's ``$defs``) live under ``components.schemas``. Maps whose order carries no meaning
are sorted, so the document can be committed and diffed.

The Redis bindings objects of the AsyncAPI bindings specification (version 0.1.0) must not
contain any properties; they are present and empty. What aioredq knows beyond the standard
fields (queue, group, concurrency, attempts, ...) is under the ``x-aioredq`` extension.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import TYPE_CHECKING, Any

from pydantic import PydanticInvalidForJsonSchema, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from ._handlers import StreamSpec, SubscribeSpec, TaskSpec

if TYPE_CHECKING:
    from ._app import App
    from ._handlers import Handler

ASYNCAPI_VERSION = "3.0.0"
DEFAULT_VERSION = "0.1.0"
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_DEFS_PREFIX = "#/$defs/"
_SCHEMAS_PREFIX = "#/components/schemas/"


def _redis_bindings() -> dict[str, Any]:
    # The Redis bindings objects have no fields (their names are reserved for future use).
    return {"redis": {}}


@dataclasses.dataclass
class _Channel:
    kind: str  # queue | stream | channel | sharded-channel | pattern
    name: str
    handlers: list[Handler] = dataclasses.field(default_factory=list)


def _operation_ids(
    channels: list[_Channel], channel_ids: dict[tuple[str, str], str]
) -> tuple[dict[str, list[str]], dict[tuple[str, str], str]]:
    """Each handler's channel ids, and the operation ids: the handler's name, with the
    channel's when it has several channels."""
    per_handler: dict[str, list[str]] = {}
    for channel in channels:
        for h in channel.handlers:
            per_handler.setdefault(h.name, []).append(channel_ids[(channel.kind, channel.name)])
    operation_ids = _unique_ids(
        ("", name if len(cids) == 1 else f"{name}-{cid}")
        for name, cids in per_handler.items()
        for cid in cids
    )
    return per_handler, operation_ids


def asyncapi_document(
    app: App, *, title: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``app``'s handlers, as JSON-ready data.

    ``title`` defaults to the module of the first handler, ``version`` to "0.1.0".
    """
    if title is None:
        modules = [getattr(h.func, "__module__", None) for h in app.handlers]
        title = next((m for m in modules if isinstance(m, str)), "aioredq app")
    info: dict[str, Any] = {"title": title, "version": version or DEFAULT_VERSION}
    doc: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION, "info": info}
    servers = _servers(app)
    if servers:
        doc["servers"] = servers
    else:
        info["description"] = (
            "Runs on the embedded memory:// backend (one process, no Redis server): "
            "no server is listed."
        )
    doc["defaultContentType"] = "application/json"

    channels = _group_channels(app.handlers)
    channel_ids = _unique_ids((c.kind, c.name) for c in channels)
    payloads, defs = _payload_schemas(app.handlers)
    message_ids = _unique_ids(("", h.name) for h in app.handlers)
    per_handler, operation_ids = _operation_ids(channels, channel_ids)

    doc_channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel in channels:
        cid = channel_ids[(channel.kind, channel.name)]
        refs = {
            message_ids[("", h.name)]: {
                "$ref": f"#/components/messages/{message_ids[('', h.name)]}"
            }
            for h in channel.handlers
        }
        doc_channels[cid] = _channel_object(channel, dict(sorted(refs.items())))
        for h in channel.handlers:
            mid = message_ids[("", h.name)]
            several = len(per_handler[h.name]) > 1
            oid = operation_ids[("", f"{h.name}-{cid}" if several else h.name)]
            operations[oid] = _operation(h, cid, mid)
    for h in app.handlers:
        messages[message_ids[("", h.name)]] = _message(h, payloads[h.name])
    doc["channels"] = dict(sorted(doc_channels.items()))
    doc["operations"] = dict(sorted(operations.items()))
    components: dict[str, Any] = {"messages": dict(sorted(messages.items()))}
    if defs:
        components["schemas"] = dict(sorted(defs.items()))
    doc["components"] = components
    return doc


def _servers(app: App) -> dict[str, Any]:
    target = app.target
    if target.scheme == "memory":
        return {}
    tls = target.tls is not None
    protocol = "rediss" if tls else "redis"
    what = {
        "cluster": "Redis Cluster seed node",
        "sentinel": f"Redis Sentinel (master {target.master!r})",
    }.get(str(target.scheme), "Redis server")
    if target.socket_path is not None:
        unix: dict[str, Any] = {
            "host": "localhost",
            "pathname": target.socket_path,
            "protocol": "redis",
            "description": f"Redis server on the Unix socket {target.socket_path}, "
            f"database {target.db}",
            "bindings": _redis_bindings(),
        }
        return {"redis": unix}
    servers: dict[str, Any] = {}
    for index, (host, port) in enumerate(target.hosts):
        shown = f"[{host}]" if ":" in host else host
        server: dict[str, Any] = {
            "host": f"{shown}:{port}",
            "protocol": protocol,
            "description": f"{what}{', TLS' if tls else ''}, database {target.db}",
            "bindings": _redis_bindings(),
        }
        servers["redis" if len(target.hosts) == 1 else f"redis-{index}"] = server
    return servers


def _group_channels(handlers: list[Handler]) -> list[_Channel]:
    found: dict[tuple[str, str], _Channel] = {}

    def add(kind: str, name: str, h: Handler) -> None:
        found.setdefault((kind, name), _Channel(kind, name)).handlers.append(h)

    for h in handlers:
        spec = h.spec
        if isinstance(spec, TaskSpec):
            add("queue", spec.queue, h)
        elif isinstance(spec, StreamSpec):
            add("stream", spec.stream, h)
        elif isinstance(spec, SubscribeSpec):
            if spec.pattern is not None:
                add("pattern", spec.pattern, h)
            for name in spec.channels:
                add("sharded-channel" if spec.sharded else "channel", name, h)
    return sorted(found.values(), key=lambda c: (c.kind, c.name))


def _safe_id(text: str) -> str:
    return _ID_UNSAFE.sub("_", text) or "_"


def _unique_ids(keys: Any) -> dict[tuple[str, str], str]:
    """A map key AsyncAPI accepts (letters, digits, ``_``, ``-``) for each (kind, name),
    unique even where two names differ only in characters that had to be replaced."""
    ids: dict[tuple[str, str], str] = {}
    taken: set[str] = set()
    for kind, name in sorted(set(keys)):
        base = _safe_id(f"{kind}-{name}" if kind else name)
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        taken.add(candidate)
        ids[(kind, name)] = candidate
    return ids


_CHANNEL_TEXT = {
    "queue": "Task queue: a Redis list of jobs (LPUSH, consumed with retries and leases).",
    "stream": "Redis stream (XADD, consumed through consumer groups or read by every app).",
    "channel": "Redis pub/sub channel (PUBLISH / SUBSCRIBE).",
    "sharded-channel": "Redis sharded pub/sub channel (SPUBLISH / SSUBSCRIBE).",
    "pattern": "Redis pub/sub pattern (PSUBSCRIBE): every channel whose name matches it.",
}


def _channel_object(channel: _Channel, messages: dict[str, Any]) -> dict[str, Any]:
    description = _CHANNEL_TEXT[channel.kind]
    extension: dict[str, Any] = {"kind": channel.kind, "name": channel.name}
    obj: dict[str, Any] = {"title": channel.name}
    if channel.kind == "pattern":
        address, parameters = _pattern_address(channel.name)
        description += f" Pattern: {channel.name!r}."
        if parameters:
            obj["parameters"] = parameters
    elif "{" in channel.name or "}" in channel.name:
        # An address reads braces as parameters: the name is in the description instead.
        address, parameters = None, {}
        description += f" Name: {channel.name!r}."
    else:
        address = channel.name
    obj["address"] = address
    obj["description"] = description
    obj["messages"] = messages
    obj["bindings"] = _redis_bindings()
    obj["x-aioredq"] = extension
    return obj


def _pattern_address(pattern: str) -> tuple[str | None, dict[str, Any]]:
    """A glob of literal text and ``*`` becomes an address with one parameter per ``*``; any
    other glob (``?``, ``[...]``, escapes, braces) has no address an AsyncAPI tool could
    read, so it is left out (null: unknown) and the pattern stays in the description."""
    if any(c in pattern for c in "?[]\\{}"):
        return None, {}
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern, {}
    address = parts[0]
    parameters: dict[str, Any] = {}
    for index, part in enumerate(parts[1:], start=1):
        name = f"match{index}"
        address += "{" + name + "}" + part
        parameters[name] = {"description": f"any text: wildcard {index} of {pattern!r}"}
    return address, parameters


def _operation(h: Handler, channel_id: str, message_id: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{channel_id}"},
        "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
        "title": h.name,
    }
    doc = inspect.cleandoc(h.func.__doc__) if h.func.__doc__ else ""
    if doc:
        op["summary"] = doc.splitlines()[0]
        op["description"] = doc
    op["bindings"] = _redis_bindings()
    op["x-aioredq"] = {"handler": h.name, "model": h.kind, **_plain(h.spec)}
    return op


def _message(h: Handler, payload: dict[str, Any]) -> dict[str, Any]:
    if h.body_type is str:
        content_type = "text/plain"
    elif h.body_type is bytes:
        content_type = "application/octet-stream"
    else:
        content_type = "application/json"
    return {
        "name": h.name,
        "title": f"{h.name} body",
        "contentType": content_type,
        "payload": payload,
    }


def _payload_schemas(handlers: list[Handler]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each handler's payload schema and the shared definitions, generated together so that
    two models of one name (from two modules) get distinct definitions. A body type pydantic
    cannot describe (a custom validator without a schema) gets a schema that says so."""
    adapters = {h.name: TypeAdapter(h.body_type) for h in handlers}
    payloads: dict[str, Any] = {}
    for h in handlers:
        try:
            adapters[h.name].json_schema(mode="validation")
        except PydanticInvalidForJsonSchema:
            del adapters[h.name]
            payloads[h.name] = {"description": f"pydantic has no JSON Schema for {h.body_type!r}"}
    if not adapters:
        return payloads, {}
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        (name, "validation", adapter) for name, adapter in adapters.items()
    ]
    schemas, top = TypeAdapter.json_schemas(inputs, ref_template=_DEFS_PREFIX + "{model}")
    raw_defs: dict[str, Any] = top.get("$defs", {})
    names = {name: new for (_, name), new in _unique_ids(("", n) for n in raw_defs).items()}
    defs = {names[name]: _fix(schema, names) for name, schema in raw_defs.items()}
    payloads.update({key: _fix(schema, names) for (key, _mode), schema in schemas.items()})
    return payloads, defs


def _fix(value: Any, names: dict[str, str]) -> Any:
    """Point ``$ref``s at ``components.schemas``; drop what the AsyncAPI schema refuses
    (OpenAPI-style ``discriminator`` objects: the ``oneOf`` with ``const`` still says it
    all); tuples as draft-07 ``items`` lists; non-finite numbers as strings (JSON has none)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str) and item.startswith(_DEFS_PREFIX):
                name = item[len(_DEFS_PREFIX) :]
                out[key] = _SCHEMAS_PREFIX + names.get(name, name)
            elif key == "discriminator" and isinstance(item, dict) and "propertyName" in item:
                continue
            elif key == "prefixItems" and isinstance(item, list):
                # Draft 2020-12 tuples in the draft-07 words of the AsyncAPI schema.
                out["items"] = _fix(item, names)
                if "items" in value:
                    out["additionalItems"] = _fix(value["items"], names)
            elif key == "items" and isinstance(value.get("prefixItems"), list):
                continue
            else:
                out[key] = _fix(item, names)
        return out
    if isinstance(value, list):
        return [_fix(item, names) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _plain(value: Any) -> Any:
    """A spec's fields as JSON data (dataclasses as objects, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if callable(value):  # its name: a repr would show an address, different on every run
        return str(getattr(value, "__qualname__", type(value).__qualname__))
    return str(value)
