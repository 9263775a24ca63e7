"""Bodies on the wire: encoding what aioredq writes, decoding and validating what it reads.

Wire rules (see the README): a ``str`` body travels as its UTF-8 text, ``bytes`` as they are,
anything else as JSON. A stream body that is a flat mapping or model becomes flat fields.
Task items that aioredq enqueues are JSON envelopes (``ENVELOPE_PREFIX`` ...); any other item is
a foreign body and is taken as it is.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from ._exceptions import MessageTooLarge

# Lua scripts match this exact prefix to count deliveries without parsing JSON.
ENVELOPE_PREFIX = b'{"aioredq":1,"attempts":'
# What an envelope is, here and in the Lua scripts alike: the prefix, 1 to 9 digits (the
# delivery count, always read from here, never from the JSON), then a comma.
_ENVELOPE = re.compile(rb'\{"aioredq":1,"attempts":(\d{1,9}),')
T = TypeVar("T")


class DecodeError(Exception):
    """A body could not be decoded or validated; ``str(exc)`` is the reason."""


def encode_body(body: Any) -> bytes:
    """The bytes of ``body`` on the wire: str as UTF-8, bytes as is, anything else JSON."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return pydantic_core.to_json(body)


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value).decode()


def encode_fields(body: Any) -> dict[str, str | bytes]:
    """Stream fields for ``body``: a flat mapping/model becomes fields, anything else ``body``."""
    if isinstance(body, (str, bytes)):
        return {"body": body}
    plain = pydantic_core.to_jsonable_python(body)
    if isinstance(plain, dict) and plain:
        return {str(k): _field_text(v) for k, v in plain.items()}
    return {"body": _field_text(plain)}


# A reserved stream field: the headers that produce hooks added (tracing's traceparent), as a
# JSON object. Consumers take it out of the entry's fields, so no handler body includes it.
HEADERS_FIELD = "aioredq-headers"


def with_headers(
    fields: dict[str, str | bytes], headers: Mapping[str, str]
) -> dict[str, str | bytes]:
    """Stream ``fields`` with ``headers`` in the reserved field ``HEADERS_FIELD``."""
    return {**fields, HEADERS_FIELD: json.dumps(dict(headers))}


def entry_headers(fields: dict[str, str]) -> dict[str, str]:
    """Take the reserved ``HEADERS_FIELD`` out of a stream entry's text fields and return the
    headers it carries (nothing for a field another program wrote that is not a JSON object)."""
    text = fields.pop(HEADERS_FIELD, None)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items()}


def byte_size(value: str | bytes) -> int:
    """Bytes that ``value`` takes once written (text travels as UTF-8)."""
    if isinstance(value, bytes) or value.isascii():
        return len(value)
    return len(value.encode("utf-8", "surrogatepass"))


def body_size(data: bytes | Mapping[str, str | bytes]) -> int:
    """Bytes of a body as stored: an item or payload, or a stream entry's field names and
    values (what a consumer measures when it reads the entry back)."""
    if isinstance(data, bytes):
        return len(data)
    return sum(byte_size(k) + byte_size(v) for k, v in data.items())


def check_size(data: bytes | Mapping[str, str | bytes], limit: int, name: str) -> None:
    size = body_size(data)
    if size > limit:
        raise MessageTooLarge(
            f"body for {name!r} is {size} bytes, over max_body_bytes={limit}; "
            "store large payloads elsewhere and send a reference"
        )


def new_ids(count: int) -> list[str]:
    """``count`` random 128-bit ids in hex, from one ``os.urandom`` call."""
    pool = os.urandom(16 * count).hex()
    return [pool[i : i + 32] for i in range(0, 32 * count, 32)]


def new_id() -> str:
    return new_ids(1)[0]


def encode_envelope(
    body: Any,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    now: float | None = None,
    priority: int = 0,
    dedup: tuple[str, int] | None = None,
) -> bytes:
    """A task item: ``{"aioredq":1,"attempts":0,"id":..,"enqueued_at":..,"body":..}``.

    ``headers`` is added when given; ``body_b64`` replaces ``body`` for bytes bodies; a
    ``priority`` above 0 follows ``enqueued_at`` (where the scripts look for it).
    """
    to_json = pydantic_core.to_json
    stamp = b"%.6f" % (time.time() if now is None else now)
    parts = [ENVELOPE_PREFIX, b'0,"id":', to_json(msg_id), b',"enqueued_at":', stamp]
    if priority:
        parts.append(b',"priority":%d' % priority)
    if dedup is not None:  # (key, ttl ms): the settle script frees the key with it
        parts += [b',"dedup":', to_json(dedup[0]), b',"dedup_ttl":%d' % dedup[1]]
    if headers:
        parts += [b',"headers":', to_json(dict(headers))]
    if isinstance(body, bytes):
        parts += [b',"body_b64":"', base64.b64encode(body), b'"}']
    else:
        parts += [b',"body":', to_json(body), b"}"]
    return b"".join(parts)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~4x to create
class TaskItem:
    """A task item as read from a processing list, with its delivery metadata."""

    raw: bytes  # exactly what is in the processing list (the LREM key)
    id: str
    attempts: int
    foreign: bytes | None  # the original item for foreign bodies
    envelope: dict[str, Any] | None
    # An item over max_body_bytes, kept aside by the fetch script: (its size, its key).
    oversized: tuple[int, str] | None = None
    broken: str | None = None  # why an envelope is unreadable (it is dead-lettered)

    @property
    def original(self) -> bytes:
        """The item as first produced (what a dead letter or a requeue carries)."""
        if self.foreign is not None:
            return self.foreign
        return reset_attempts(self.raw, 0)

    def undelivered(self) -> bytes:
        """The item as it was before this delivery was counted (for handing back)."""
        if self.foreign is not None and self.attempts <= 1:
            return self.foreign
        return reset_attempts(self.raw, self.attempts - 1)


def reset_attempts(raw: bytes, attempts: int) -> bytes:
    match = _ENVELOPE.match(raw)
    if match is None:
        return raw
    return ENVELOPE_PREFIX + str(max(attempts, 0)).encode() + raw[match.end(1) :]


def parse_task_item(raw: bytes) -> TaskItem:
    """Parse an item taken from a processing list (always an envelope after the move script).

    Never raises. The delivery count is the one the scripts count in the prefix, so an item
    that starts like an envelope but is not one (broken, or forged) still reaches the dead
    letters after ``max_attempts`` deliveries at most: it is marked ``broken``."""
    match = _ENVELOPE.match(raw)
    if match is None:
        return TaskItem(raw, "", 1, raw, None)
    attempts = int(match.group(1))
    try:
        env = pydantic_core.from_json(raw)
    except ValueError:
        env = _loads_escaped(raw)
    if type(env) is not dict:
        return TaskItem(raw, "", attempts, None, None, broken="not a JSON object")
    msg_id = env.get("id", "")
    if type(msg_id) is not str:
        msg_id = str(msg_id)
    if "oversized" in env:
        spec = env["oversized"]
        size = spec.get("size") if isinstance(spec, dict) else None
        key = spec.get("key") if isinstance(spec, dict) else None
        if type(size) is not int or not isinstance(key, str):
            return TaskItem(raw, msg_id, attempts, None, None, broken="bad 'oversized' field")
        return TaskItem(raw, msg_id, attempts, None, None, oversized=(size, key))
    if "raw" in env:  # a foreign item wrapped by the move script
        if not isinstance(env["raw"], str):
            return TaskItem(raw, msg_id, attempts, None, None, broken="'raw' is not a string")
        foreign = env["raw"].encode("utf-8", "surrogateescape")
        return TaskItem(raw, msg_id, attempts, foreign, None)
    return TaskItem(raw, msg_id, attempts, None, env)


def _loads_escaped(raw: bytes) -> Any:
    """An envelope that pydantic cannot parse, or None. Lua's cjson copies the bytes of a
    wrapped foreign item into the JSON text as they are, so an item that is not UTF-8 gives an
    envelope that is not UTF-8 either: the standard library parses the escaped text and the
    bytes round-trip exactly. Never raises: a bad item must not stop a consumer."""
    try:
        return json.loads(raw.decode("utf-8", "surrogateescape"))
    except ValueError:
        return None


def envelope_metadata(env: dict[str, Any]) -> tuple[float | None, dict[str, str]]:
    """``enqueued_at`` and ``headers`` of an envelope. Another program may write envelopes
    too: metadata of the wrong type is dropped rather than allowed to break the delivery."""
    enqueued = env.get("enqueued_at")
    if (
        not isinstance(enqueued, (int, float))
        or isinstance(enqueued, bool)
        or not 0 <= enqueued < 1e11  # a time datetime can represent (also refuses nan)
    ):
        enqueued = None
    headers = env.get("headers")
    if not isinstance(headers, dict):
        return enqueued, {}
    return enqueued, {str(k): v if isinstance(v, str) else str(v) for k, v in headers.items()}


def _core_type(schema: Any) -> str:
    while isinstance(schema, dict):
        kind = schema.get("type")
        if (
            kind
            in (
                "definitions",
                "nullable",
                "default",
                "function-after",
                "function-before",
                "function-wrap",
                "function-plain",
            )
            and "schema" in schema
        ):
            schema = schema["schema"]
            continue
        if kind == "definition-ref":
            return "model"
        return str(kind)
    return "any"


class Codec:
    """Decodes bodies for one handler and validates them against its annotation."""

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self.adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        core = _core_type(self.adapter.core_schema)
        # Values that pydantic would return unchanged need no trip through it.
        self.takes_any = annotation is Any or annotation is object
        self.takes_dict = annotation is dict
        self.wants_str = annotation is str
        self.wants_bytes = annotation is bytes
        self.wants_mapping = core in (
            "dict",
            "model",
            "dataclass",
            "typed-dict",
            "any",
            "model-fields",
            "dataclass-args",
        )

    # tasks and pub/sub ------------------------------------------------------------------
    def decode_text(self, data: bytes) -> Any:
        """A foreign or published payload: raw text for str/bytes, else JSON then validation."""
        return _total(self._decode_text, data)

    def decode_item(self, item: TaskItem) -> Any:
        """The body of a task item (an envelope written by aioredq, or a foreign item)."""
        env = item.envelope
        if env is not None and self.takes_dict and "body_b64" not in env:
            body = env.get("body")
            if type(body) is dict:
                return body  # nothing to validate
        return _total(self._decode_item, item)

    # streams ----------------------------------------------------------------------------
    def decode_fields(self, fields: dict[str, str]) -> Any:
        """The body of a stream entry from its fields (a mapping, or one ``body`` field)."""
        if self.takes_dict or self.takes_any:
            return fields  # nothing to decode or validate
        return _total(self._decode_fields, fields)

    def _decode_text(self, data: bytes) -> Any:
        if self.wants_bytes:
            return data
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"UnicodeDecodeError: body is not UTF-8 text ({exc})") from None
        if self.wants_str:
            return text
        try:
            value: Any = pydantic_core.from_json(text)
        except ValueError:
            return self._validate(text)
        try:
            return self.adapter.validate_python(value)
        except ValidationError as first:
            # Text that happens to parse as JSON ("42" for a `str | None` handler) may still
            # be meant as text.
            if isinstance(value, str):
                raise DecodeError(_validation_text(first)) from None
            try:
                return self.adapter.validate_python(text)
            except ValidationError:
                raise DecodeError(_validation_text(first)) from None

    def _decode_item(self, item: TaskItem) -> Any:
        if item.foreign is not None:
            return self._decode_text(item.foreign)
        env = item.envelope or {}
        if "body_b64" in env:
            data = base64.b64decode(env["body_b64"], validate=True)
            return data if self.wants_bytes else self._decode_text(data)
        body = env.get("body")
        if self.wants_bytes and isinstance(body, str):
            return body.encode()
        return self._validate(body)

    def _decode_fields(self, fields: dict[str, str]) -> Any:
        if self.takes_dict or self.takes_any:
            return fields
        if not self.wants_mapping and "body" in fields and len(fields) == 1:
            # Field text that is not UTF-8 was escaped when read; give back the exact bytes.
            return self._decode_text(fields["body"].encode("utf-8", "surrogateescape"))
        try:
            return self.adapter.validate_python(fields)
        except ValidationError as first:
            nested = {k: _maybe_json(v) for k, v in fields.items()}
            if nested == fields:
                raise DecodeError(_validation_text(first)) from None
            try:
                return self.adapter.validate_python(nested)
            except ValidationError:
                raise DecodeError(_validation_text(first)) from None

    def _validate(self, value: Any) -> Any:
        if self.takes_any or (self.takes_dict and type(value) is dict):
            return value
        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            raise DecodeError(_validation_text(exc)) from None


def _total(decode: Callable[[T], Any], data: T) -> Any:
    """Run ``decode``; any failure becomes a DecodeError, so a body that cannot be decoded
    (even by a user validator raising something pydantic does not wrap) is dead-lettered
    instead of being left unsettled."""
    try:
        return decode(data)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from None


def _maybe_json(value: str) -> Any:
    """Nested values travel as JSON text; decode those (and only those) for a second try."""
    if value[:1] in ("{", "[") or value == "null":
        try:
            return pydantic_core.from_json(value)
        except ValueError:
            return value
    return value


def _validation_text(exc: ValidationError) -> str:
    """Pydantic's message on one line (log lines and dead letters stay one line each)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return "ValidationError: " + "; ".join(
        line for line in lines if line and not line.startswith("For further information")
    )


def decode_fields_raw(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """Stream field names and values as text (bytes that are not UTF-8 are escaped)."""
    try:
        names, values = map(bytes.decode, fields), map(bytes.decode, fields.values())
        return dict(zip(names, values, strict=False))  # one length: a dict's own
    except UnicodeDecodeError:
        return {
            k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in fields.items()
        }


def decode_flat(flat: list[bytes]) -> dict[str, str]:
    """Stream field names and values (alternating, as read) as text; bytes that are not
    UTF-8 are escaped."""
    try:
        text = list(map(bytes.decode, flat))
    except UnicodeDecodeError:
        text = [part.decode("utf-8", "surrogateescape") for part in flat]
    return dict(zip(text[::2], text[1::2], strict=False))  # an even length: Redis pairs them
