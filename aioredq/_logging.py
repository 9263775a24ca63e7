"""Log lines that foreign text cannot forge.

Message ids, keys, channel names and error texts come from other programs; a newline in one of
them would start what looks like a new log line (say, a fake ``CRITICAL``). Every record of the
``aioredq`` logger has its message escaped once it is formatted (``EscapeFilter``, installed on
that logger when aioredq is imported), and the CLI's formatter escapes every logger's records
and indents tracebacks, so one record is one line that starts with a timestamp.
"""

from __future__ import annotations

import logging

LOGGER = "aioredq"
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


def install() -> None:
    """Escape the messages of aioredq's own logger, whoever configures the handlers."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, EscapeFilter) for f in logger.filters):
        logger.addFilter(EscapeFilter())
