"""Block YAML for JSON data (objects, arrays, strings, numbers, booleans, null).

Written here rather than taken from PyYAML so that ``aioredq docs --yaml`` needs nothing more
and prints the same text on every machine. A string is plain where no YAML 1.1 or 1.2 reader
could take it for anything else, double-quoted (with escapes) otherwise.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Plain scalars: a letter, ``_``, ``$`` or ``/`` first, then only characters no YAML reader
# treats specially there.
_PLAIN = re.compile(r"[A-Za-z_$/][A-Za-z0-9_$./-]*(?: [A-Za-z0-9_$./()-]+)*")
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def to_yaml(value: Any) -> str:
    """``value`` as a block YAML document (a trailing newline included)."""
    lines = _block(value, 0) if isinstance(value, (dict, list)) and value else [_scalar(value)]
    return "\n".join(lines) + "\n"


def _block(value: dict[str, Any] | list[Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            head = f"{pad}{_scalar(str(key))}:"
            if isinstance(item, (dict, list)) and item:
                lines.append(head)
                # Lists under a key sit at the key's indentation, as most YAML writers do.
                lines.extend(_block(item, indent if isinstance(item, list) else indent + 2))
            else:
                lines.append(f"{head} {_scalar(item)}")
        return lines
    for item in value:
        if isinstance(item, (dict, list)) and item:
            inner = _block(item, indent + 2)
            lines.append(f"{pad}- {inner[0][indent + 2 :]}")
            lines.extend(inner[1:])
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return json.dumps(value)
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    # Control characters, DEL and C1, the line and paragraph separators, the BOM and lone
    # surrogates are not printable in YAML: escaped.
    if (
        code < 0x20
        or 0x7F <= code <= 0x9F
        or code in (0x2028, 0x2029, 0xFEFF)
        or 0xD800 <= code <= 0xDFFF
    ):
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
    return char
