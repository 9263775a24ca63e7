"""Waiting for results: ``app.result`` and ``app.request``.

One reader per queue per app follows the queue's capped announcement stream ``{q}:finished``
with a blocking XREAD and wakes the waiters of each result key it sees; a thousand waiters
share it (and one connection). A waiter registers, lets the reader learn where the stream ends,
then reads its key once: a result written before that read is found by it, one written after
is announced past where the reader started. Announcements lost to the stream's cap or a
wrong-typed stream are caught by a sweep (one MGET of the waited keys) every few seconds.
memory:// cannot block: its reader reads without blocking and waits for the in-process
consumer's wake-up (or a short poll)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from ._connection import BLOCK_SECONDS, is_connection_error, translated
from ._exceptions import InvalidBody, JobFailed
from ._transports import keys
from ._transports.results import finished_after, last_finished, read_result, read_results

if TYPE_CHECKING:
    from ._producer import Producer

log = logging.getLogger("aioredq")
SWEEP_EVERY = 5.0
MEMORY_POLL = 0.05
RETRY_PAUSE = 0.5


class Reader:
    """Follows ``{q}:finished`` while anyone waits on the queue's results."""

    def __init__(self, app: Producer, queue: str) -> None:
        self.app = app
        self.queue = queue
        self.loop = asyncio.get_running_loop()
        self.key = keys.finished(queue)
        self.waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._complained = False

    async def wait(self, key: str) -> bytes:
        """The value of result key ``key`` once it is written (cancel to stop waiting)."""
        loop = asyncio.get_running_loop()
        conn = self.app.connection
        while True:
            woken: asyncio.Future[None] = loop.create_future()
            self.waiting.setdefault(key, set()).add(woken)
            try:
                await asyncio.shield(self._start())
                raw = await conn.produce("read a result", lambda: read_result(conn, key))
                if raw is not None:
                    return bytes(raw)
                await woken
            finally:
                left = self.waiting.get(key)
                if left is not None:
                    left.discard(woken)
                    if not left:
                        del self.waiting[key]

    def _start(self) -> asyncio.Future[None]:
        if self._task is None or self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.ensure_future(self._run(self._ready))
        return self._ready

    async def _run(self, ready: asyncio.Future[None]) -> None:
        conn = self.app.connection
        try:
            try:
                last = await translated("read results", lambda: last_finished(conn, self.queue))
            except Exception as exc:
                if is_connection_error(exc):
                    ready.set_exception(exc)
                    ready.exception()  # retrieved here too: a waiter may be gone
                    return
                # A wrong-typed stream, say: the sweeps alone find the results.
                self._complain(exc)
                last = b"0-0"
            ready.set_result(None)
            sweep_at = time.monotonic() + SWEEP_EVERY
            while self.waiting:
                try:
                    last = await self._read(last)
                    if time.monotonic() >= sweep_at:
                        sweep_at = time.monotonic() + SWEEP_EVERY
                        await self._sweep()
                except Exception as exc:
                    self._complain(exc)
                    await asyncio.sleep(RETRY_PAUSE)
                    await self._sweep_quietly()
        finally:
            self._task = None
            self._ready = None
            # Whoever still waits starts a new reader (and reads its key again).
            self._wake_all()

    async def _read(self, last: bytes) -> bytes:
        conn = self.app.connection
        if conn.can_block:
            reply = await finished_after(conn, self.key, last, int(BLOCK_SECONDS * 1000))
        else:
            reply = await finished_after(conn, self.key, last, None)
            if not reply:
                event = self.app._wakeups.setdefault(self.key, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), MEMORY_POLL)
                event.clear()
                return last
        entries = reply.values() if isinstance(reply, dict) else (e for _, e in reply or ())
        for batch in entries:
            for entry_id, fields in batch:
                last = entry_id
                for key in fields.values():
                    self._wake(key.decode("utf-8", "replace"))
        self._complained = False
        return last

    async def _sweep(self) -> None:
        waited = list(self.waiting)
        conn = self.app.connection
        for start in range(0, len(waited), 500):
            part = waited[start : start + 500]
            values = await read_results(conn, part)
            for key, value in zip(part, values, strict=True):
                if value is not None:
                    self._wake(key)

    async def _sweep_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self._sweep()

    def _wake(self, key: str) -> None:
        for woken in self.waiting.get(key, ()):
            if not woken.done():
                woken.set_result(None)

    def _wake_all(self) -> None:
        for key in list(self.waiting):
            self._wake(key)

    def _complain(self, exc: Exception) -> None:
        if not self._complained:
            self._complained = True
            level = logging.WARNING if is_connection_error(exc) else logging.ERROR
            log.log(
                level,
                "queue %r: cannot follow %r (%s: %s); result waiters check their keys "
                "every %.0fs meanwhile",
                self.queue,
                self.key,
                type(exc).__name__,
                exc,
                SWEEP_EVERY,
            )


async def close_readers(app: Producer) -> None:
    """Stop the readers of the running loop (the app is closing its connections)."""
    loop_id = id(asyncio.get_running_loop())
    found = readers(app)
    tasks = []
    for index in [i for i in found if i[1] == loop_id]:
        task = found.pop(index)._task
        if task is not None:
            task.cancel()
            tasks.append(task)
    if tasks:
        await asyncio.wait(tasks, timeout=BLOCK_SECONDS + 1)


def readers(app: Producer) -> dict[tuple[str, int], Reader]:
    """The app's readers, by (queue, id of the running loop): a reader belongs to one loop."""
    found: dict[tuple[str, int], Reader] | None = getattr(app, "_result_readers", None)
    if found is None:
        found = {}
        app._result_readers = found  # type: ignore[attr-defined]
    return found


async def wait_result(app: Producer, queue: str, job_id: str, result_type: Any) -> Any:
    """The value job ``job_id`` of ``queue`` returned (validated against ``result_type``
    unless it is None); raises JobFailed when it was dead-lettered."""
    loop = asyncio.get_running_loop()
    index = (queue, id(loop))
    reader = readers(app).get(index)
    if reader is None or reader.loop is not loop:  # a dead loop's id, reused
        reader = readers(app)[index] = Reader(app, queue)
    key = keys.result(queue, job_id)
    raw = await reader.wait(key)
    return decode_result(job_id, key, raw, result_type)


def decode_result(job_id: str, key: str, raw: bytes, result_type: Any) -> Any:
    try:
        doc = json.loads(raw)
        status = doc["status"]
    except (ValueError, TypeError, KeyError):
        raise InvalidBody(f"{key!r} does not hold a result aioredq wrote") from None
    if status == "dead":
        raise JobFailed(job_id, str(doc.get("error", "")))
    if "value_b64" in doc:
        import base64

        value: Any = base64.b64decode(doc["value_b64"])
    else:
        value = doc.get("value")
    if result_type is None:
        return value
    try:
        return TypeAdapter(result_type).validate_python(value)
    except ValidationError as exc:
        raise InvalidBody(
            f"the result of job {job_id!r} does not validate as {result_type!r}: {exc}"
        ) from None
