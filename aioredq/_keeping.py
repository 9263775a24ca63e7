"""Outcomes of a task consumer whose handler keeps results (``result_ttl=``).

The same batching and refusal handling as ``Outcomes``; the writes go through
``SETTLE_KEEPING``, which stores each job's result in the same script as its ack or dead
letter. An ack whose result Redis refuses stays in the processing list and becomes a retry
(the job runs again later: a done job never goes without its result)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pydantic_core

from ._connection import is_connection_error
from ._outcomes import Letters, Outcomes, Retries, Written
from ._transports.results import ResultTransport

REFUSED_RESULT_RETRY_MS = 1000


def result_json(status: str, *, value: Any = None, error: str | None = None) -> bytes:
    """``{"status", "value" | "error", "finished_at"}``: a str value as a JSON string, bytes
    as text when UTF-8 (else ``value_b64``), anything else as JSON (models through pydantic)."""
    to_json = pydantic_core.to_json
    if error is not None:
        part = b'"error":' + to_json(error)
    elif isinstance(value, bytes):
        try:
            part = b'"value":' + to_json(value.decode())
        except UnicodeDecodeError:
            part = b'"value_b64":"' + base64.b64encode(value) + b'"'
    else:
        part = b'"value":' + to_json(value)
    # An ISO time is digits and "-:.T+" only: nothing in it for JSON to escape.
    finished = datetime.now(UTC).isoformat().encode()
    return b"".join((_status(status), part, b',"finished_at":"', finished, b'"}'))


def _status(status: str) -> bytes:
    head = _STATUS.get(status)
    if head is None:
        head = _STATUS[status] = b'{"status":' + pydantic_core.to_json(status) + b","
    return head


# status -> the opening of its result's JSON, up to the value.
_STATUS: dict[str, bytes] = {}


class KeepingOutcomes(Outcomes):
    def __init__(self, transport: Any, results: ResultTransport, ttl: float, wake: Any) -> None:
        super().__init__(transport, wake)
        self._results = results
        self._ttl_ms = max(int(ttl * 1000), 1)
        # item -> (job id, result): what each ack or dead letter stores beside it.
        self.kept: dict[bytes, tuple[str, bytes]] = {}
        self.announced = 0  # results written: the in-process waiters' wake-up count

    def keep_value(self, raw: bytes, job_id: str, value: Any, limit: int) -> str | None:
        """Keep ``value`` as the result of item ``raw``; else why it cannot be kept."""
        try:
            result = result_json("succeeded", value=value)
        except Exception as exc:  # a value JSON cannot carry
            return f"UnserializableResult: {type(exc).__name__}: {exc}"
        if len(result) > limit:
            return (
                f"MessageTooLarge: the result is {len(result)} bytes, over max_body_bytes={limit}"
            )
        self.kept[raw] = (job_id, result)
        return None

    def keep_error(self, raw: bytes, job_id: str, error: str) -> None:
        self.kept[raw] = (job_id, result_json("dead", error=error))

    async def _write(self, acks: list[bytes], retries: Retries, dead: Letters) -> Written:
        kept = self.kept
        try:
            done = await self._results.settle(
                [(item, *kept[item]) for item in acks],
                retries,
                [(item, letter, *kept[item]) for item, letter in dead],
                self._ttl_ms,
            )
        except Exception as exc:
            if is_connection_error(exc):
                raise
            # Refused as a whole (an ACL denial on one of its keys): nothing moved. Acks wait
            # as retries with the rest, tried again with backoff.
            again = [(item, REFUSED_RESULT_RETRY_MS) for item in acks]
            return [], (again + retries, dead), f"{type(exc).__name__}: {exc}"
        refused_acks = [acks[i] for i in done.acks_refused]
        held = set(refused_acks)
        r = len(retries) if done.retries_refused is None else done.retries_refused
        d = len(dead) if done.dead_refused is None else done.dead_refused
        written = [
            *(a for a in acks if a not in held),
            *(raw for raw, _ in retries[:r]),
            *(raw for raw, _ in dead[:d]),
        ]
        for raw in written:
            kept.pop(raw, None)
        self.announced += len(written)
        # A refused result: the job runs again later, its result written then.
        again = [(item, REFUSED_RESULT_RETRY_MS) for item in refused_acks]
        self.retries += again
        why = "; ".join(e for e in (done.retry_error, done.dead_error, done.result_error) if e)
        return written, (retries[r:], dead[d:]), why
