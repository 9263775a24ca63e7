"""Tracing across two processes: spans produced here, handled by a worker run through the CLI
(exporting its spans to a file), with JSON log lines that carry the trace id."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aioredq import App, Message
from aioredq.otel import Tracing

WORKER = """
import json, os
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from aioredq import App, Backoff, Reject
from aioredq.otel import Tracing


class FileExporter(SpanExporter):
    def export(self, spans):
        with open(os.environ["SPANS_FILE"], "a") as out:
            for s in spans:
                out.write(json.dumps({
                    "name": s.name,
                    "kind": s.kind.name,
                    "trace_id": format(s.context.trace_id, "032x"),
                    "span_id": format(s.context.span_id, "016x"),
                    "parent": None if s.parent is None else format(s.parent.span_id, "016x"),
                    "attributes": dict(s.attributes),
                    "events": [e.name for e in s.events],
                    "status": s.status.status_code.name,
                }) + "\\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
app = App(middleware=[Tracing(tracer_provider=provider)])
FAST = Backoff(base=0.01, factor=1, cap=0.01, jitter=False)


@app.task("otel-jobs", max_attempts=2, backoff=FAST)
async def job(body: str) -> None:
    if body == "fail":
        raise ValueError("boom\\nforged line")
    if body == "reject":
        raise Reject("refused")


@app.stream("otel-events", group="g", start="earliest", max_deliveries=2, backoff=FAST)
async def event(body: dict[str, str]) -> None:
    assert set(body) == {"n"}, body


@app.subscribe("otel-news")
async def news(body: str) -> None:
    pass
"""


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


JSON_LOGS = ("--log-format", "json")


async def _produce(producer: App) -> tuple[str, str, str, list[str], str]:
    async with producer:
        ok_id = await producer.enqueue("otel-jobs", "ok")
        fail_id = await producer.enqueue("otel-jobs", "fail")
        reject_id = await producer.enqueue("otel-jobs", "reject")
        batch_ids = await producer.enqueue_many("otel-jobs", ["a", "b"])
        entry_id = await producer.append("otel-events", {"n": "1"})
        await producer.publish("otel-news", "hi")
    return ok_id, fail_id, reject_id, batch_ids, entry_id


def _wait(condition: Any, what: str, worker: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert worker.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_consumer_spans_are_children_of_producer_spans_across_processes(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "otelworker.py").write_text(WORKER)
    spans_file = tmp_path / "spans.jsonl"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    producer = App(redis_url, middleware=[Tracing(tracer_provider=provider)])
    client = redis.Redis.from_url(redis_url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "aioredq", "otelworker:app", "--url", redis_url, *JSON_LOGS],
        cwd=tmp_path,
        env={**os.environ, "SPANS_FILE": str(spans_file)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: client.pubsub_numsub("otel-news")[0][1] == 1, "the subscription", worker)
        ok_id, fail_id, reject_id, batch_ids, entry_id = asyncio.run(_produce(producer))
        # ok, a, b, reject, two attempts of fail, the entry and the published message
        _wait(lambda: len(_spans(spans_file)) >= 8, "the worker's spans", worker)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, log = worker.communicate(timeout=60)
        client.close()
    assert worker.returncode == 0, log

    producer_spans = exporter.get_finished_spans()
    assert sorted(s.name for s in producer_spans) == [
        "append otel-events",
        *["enqueue otel-jobs"] * 4,
        "publish otel-news",
    ]
    produced = {s.name: s for s in producer_spans}
    assert all(s.kind is SpanKind.PRODUCER for s in producer_spans)
    by_id = {format(s.context.span_id, "016x"): s for s in producer_spans}
    batch = [s for s in producer_spans if s.attributes.get("messaging.batch.message_count")]
    assert [s.attributes["messaging.batch.message_count"] for s in batch] == [2]
    assert produced["append otel-events"].attributes["messaging.system"] == "redis"

    consumed = _spans(spans_file)
    assert all(s["kind"] == "CONSUMER" for s in consumed)
    by_message = {}
    for span in consumed:
        attributes = span["attributes"]
        assert attributes["messaging.system"] == "redis"
        assert attributes["messaging.operation.type"] == "process"
        by_message.setdefault(attributes.get("messaging.message.id"), []).append(span)

    def parent_of(span: dict[str, Any]) -> Any:
        parent = by_id[span["parent"]]
        assert format(parent.context.trace_id, "032x") == span["trace_id"]
        return parent

    for msg_id in (ok_id, reject_id, *batch_ids):
        [span] = by_message[msg_id]
        assert parent_of(span).name == "enqueue otel-jobs"
        assert span["attributes"]["messaging.destination.name"] == "otel-jobs"
    # Both batch jobs are children of the one batch span.
    assert {by_message[i][0]["parent"] for i in batch_ids} == {
        format(batch[0].context.span_id, "016x")
    }
    [entry] = by_message[entry_id]
    assert parent_of(entry).name == "append otel-events"
    assert entry["attributes"]["messaging.consumer.group.name"] == "g"
    # Retries and dead letters are on the spans; exceptions are recorded.
    first, second = sorted(by_message[fail_id], key=lambda s: s["attributes"][DELIVERY])
    assert [first["attributes"][DELIVERY], second["attributes"][DELIVERY]] == [1, 2]
    assert sorted(first["events"]) == ["exception", "retry"] and first["status"] == "ERROR"
    assert sorted(second["events"]) == ["dead_letter", "exception"]
    assert parent_of(first) is parent_of(second)
    assert sorted(by_message[reject_id][0]["events"]) == ["dead_letter", "exception"]
    assert by_message[ok_id][0]["events"] == [] and by_message[ok_id][0]["status"] == "UNSET"
    # Pub/sub carries no context: a new root span.
    [published] = by_message[None]
    assert published["parent"] is None and published["name"] == "process otel-news"

    # JSON log lines: one object per line; the dead letter's carries the fields and trace id.
    records = [json.loads(line) for line in log.splitlines()]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    [dead] = [r for r in records if r.get("message_id") == fail_id and r["level"] == "ERROR"]
    assert dead["handler"] == "job" and dead["key"] == "otel-jobs" and dead["attempt"] == 2
    assert dead["error"] == "ValueError: boom\nforged line"
    assert dead["trace_id"] == first["trace_id"]


DELIVERY = "messaging.message.delivery_count"


def test_aioredq_imports_without_opentelemetry_and_otel_says_what_to_install() -> None:
    blocked = "import sys; sys.modules['opentelemetry'] = None; "
    plain = subprocess.run(
        [sys.executable, "-c", blocked + "import aioredq, aioredq._cli; print('ok')"],
        capture_output=True,
        text=True,
    )
    assert plain.stdout.strip() == "ok", plain.stderr
    otel = subprocess.run(
        [sys.executable, "-c", blocked + "import aioredq.otel"], capture_output=True, text=True
    )
    assert otel.returncode == 1
    assert "ImportError: aioredq.otel needs OpenTelemetry: pip install 'aioredq[otel]'" in (
        otel.stderr
    )


async def test_consumer_spans_carry_each_messages_attributes_and_errors() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    headers: dict[str, str] = {}
    with tracing.on_produce("jobs", headers, operation="enqueue"):
        pass

    async def ok(message: Message) -> str:
        return "done"

    async def fails(message: Message) -> None:
        raise ValueError("boom")

    job = Message("7", "task", "jobs", "jobs", 2, b"x", headers=headers, max_attempts=3)
    assert await tracing(job, ok) == "done"
    with pytest.raises(ValueError):
        await tracing(dataclasses.replace(job, attempt=3), fails)
    for channel in ("news.a", "news.b"):
        published = Message("", "subscribe", "news.*", channel, 1, b"x", pattern="news.*")
        await tracing(published, ok)

    producer, first, failed, news_a, news_b = exporter.get_finished_spans()
    assert first.parent is not None and first.parent.span_id == producer.context.span_id
    assert first.context.trace_id == producer.context.trace_id
    assert first.name == "process jobs" and first.kind is SpanKind.CONSUMER
    assert dict(first.attributes or {}) == {
        "messaging.system": "redis",
        "messaging.destination.name": "jobs",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.delivery_count": 2,
        "messaging.message.id": "7",
    }
    assert first.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: boom"
    assert [e.name for e in failed.events] == ["dead_letter", "exception"]
    assert (failed.attributes or {})["aioredq.outcome"] == "dead_letter"
    for span, channel in ((news_a, "news.a"), (news_b, "news.b")):
        attributes = dict(span.attributes or {})
        assert attributes["messaging.destination.name"] == channel
        assert attributes["messaging.destination.template"] == "news.*"
        assert "messaging.message.id" not in attributes
        assert span.parent is None
