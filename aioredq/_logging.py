"""Log lines that foreign text cannot forge.

Message ids, keys, channel names and error texts come from other programs; a newline in one of
them would start what looks like a new log line (say, a fake ``CRITICAL``). Every record of the
``aioredq`` logger has its message escaped once it is formatted (``EscapeFilter``, installed on
that logger when aioredq is imported), and the CLI's formatter escapes every logger's records
and indents tracebacks, so one record is one line that starts with a timestamp.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

LOGGER = "aioredq"
# The trace id of the handler call under way (set by tracing), for JSON log lines: it stays
# set in the worker after the call, so the retry or dead-letter line that follows has it too.
trace_id: ContextVar[str | None] = ContextVar("aioredq_trace_id", default=None)
# Fields aioredq's records carry (``extra=``) that JSON lines show, in this order.
FIELDS = ("handler", "key", "message_id", "attempt", "error")
# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators; tab is kept.
_SPECIAL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c != ord("\t")}
_SPECIAL |= {ord("\n"): "\\n", ord("\r"): "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def escape(text: str) -> str:
    """``text`` with every character that could end a line or drive a terminal escaped."""
    return text.translate(_SPECIAL)


class EscapeFilter(logging.Filter):
    """Formats the record's message and escapes it (so arguments cannot add lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape(message)
        if escaped != message or record.args:
            record.msg, record.args = escaped, None
        return True


class LineFormatter(logging.Formatter):
    """One record, one line: the message escaped, a traceback indented under it."""

    def format(self, record: logging.LogRecord) -> str:
        EscapeFilter().filter(record)
        return super().format(record)

    def formatException(self, ei: object) -> str:
        text = super().formatException(ei)  # type: ignore[arg-type]
        return "\n".join(f"    {escape(line)}" for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(f"    {escape(line)}" for line in stack_info.splitlines())


class JsonFormatter(logging.Formatter):
    """One record, one JSON object on one line, for log shippers: ``time`` (ISO 8601, UTC),
    ``level``, ``logger``, ``message``, then ``handler``, ``key``, ``message_id``,
    ``attempt``, ``error`` and ``trace_id`` where known, and ``exception`` (the traceback).
    JSON escaping keeps foreign text inside its string: no character of it ends the line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        current = trace_id.get()
        if current is not None:
            line["trace_id"] = current
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: U+2028/U+2029 and every other non-ASCII character travel as \u escapes.
        return json.dumps(line, ensure_ascii=True, default=str)


def install() -> None:
    """Escape the messages of aioredq's own logger, whoever configures the handlers."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, EscapeFilter) for f in logger.filters):
        logger.addFilter(EscapeFilter())
