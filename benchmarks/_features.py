"""The job features whose price ``--features`` puts on the table, one entry each.

A feature row runs a model with one feature on against the same model with it off (the plain
aioredq row), in the same run. An entry says which models it applies to and what turns it on:
keyword arguments of the handler's decorator, of ``app.enqueue`` (per message) and of
``app.enqueue_many`` (its batch form, where it has one), and a ``setup`` made in the measured
process (App keyword arguments such as middleware). A feature whose keyword the installed
aioredq does not accept yet is skipped with a one-line note: the entries can precede the code.

Task features with enqueue keywords, and features that change what the app produces (tracing
adds a ``traceparent``), have their backlog written through the app's own produce path, so the
consumer meets the feature's data layout; the feature-off row keeps the raw prefill of the same
bodies.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._common import MODELS

# The decorator of each model.
DECORATORS = {"task": "task", "stream": "stream", "pubsub": "subscribe"}


@dataclass
class Armed:
    """What a feature's ``setup`` made: App keyword arguments, and what to call once the run
    is over (outside the timing) for figures that go in the JSON."""

    app_kwargs: dict[str, Any] = field(default_factory=dict)
    finish: Callable[[], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Feature:
    name: str
    models: tuple[str, ...]
    what: str  # the footnote: what exactly the row measures
    decorator: Mapping[str, Any] = field(default_factory=dict)
    enqueue: Callable[[int], dict[str, Any]] | None = None  # message number -> enqueue kwargs
    enqueue_many: Mapping[str, Any] | None = None  # the same for a whole batch, if it has one
    setup: Callable[[], Armed] | None = None
    app_kwargs: tuple[str, ...] = ()  # the App keywords ``setup`` passes (checked up front)
    needs: tuple[str, ...] = ()  # modules that must import
    produce: bool = False  # producing pays for it too: add produce rows
    produced: bool = False  # it changes what the app produces: prefill through the app

    def prefill_through_app(self, model: str) -> bool:
        return model != "pubsub" and (self.produced or (model == "task" and bool(self.enqueue)))

    def batched(self) -> bool:
        """Whether task bodies go through ``enqueue_many`` (else concurrent ``enqueue``)."""
        if self.enqueue is None:
            return True
        return self.enqueue_many is not None and _accepts("enqueue_many", self.enqueue_many)


async def _noop(message: Any, call_next: Any) -> Any:
    return await call_next(message)


def _middleware() -> Armed:
    return Armed({"middleware": [_noop]})


def _tracing() -> Armed:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from aioredq.otel import Tracing

    exported = [0]

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            exported[0] += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))

    def finish() -> dict[str, Any]:
        provider.shutdown()  # exports what is still queued
        return {"spans_exported": exported[0]}

    return Armed({"middleware": [Tracing(tracer_provider=provider)]}, finish)


FEATURES = (
    Feature(
        "middleware",
        MODELS,
        "one no-op middleware `async def m(message, call_next): return await call_next(message)`",
        setup=_middleware,
        app_kwargs=("middleware",),
    ),
    Feature(
        "tracing",
        MODELS,
        "aioredq.otel.Tracing on the OpenTelemetry SDK (TracerProvider, BatchSpanProcessor with "
        "its defaults) and an exporter that discards the spans: creating, recording, queueing "
        "and batching every span and carrying traceparent, not what a real exporter or a "
        "sampler costs; the backlog is written by a traced app",
        setup=_tracing,
        app_kwargs=("middleware",),
        needs=("opentelemetry.sdk.trace", "aioredq.otel"),
        produce=True,
        produced=True,
    ),
    Feature("timeout", MODELS, "timeout=30 (never reached)", decorator={"timeout": 30}),
    Feature("result_ttl", ("task",), "result_ttl=60: every outcome stored", {"result_ttl": 60}),
    Feature(
        "priority",
        ("task",),
        "every job enqueued with priority=5",
        enqueue=lambda _i: {"priority": 5},
        enqueue_many={"priority": 5},
        produce=True,
    ),
    Feature(
        "dedup",
        ("task",),
        "every job enqueued with its own key= (one enqueue call per job)",
        enqueue=lambda i: {"key": f"bench-{i}"},
        produce=True,
    ),
    Feature(
        "rate",
        ("task", "stream"),
        'rate="1000000/s", a limit that never binds: the price of the check',
        decorator={"rate": "1000000/s"},
    ),
)
BY_NAME = {feature.name: feature for feature in FEATURES}


def _accepts(method: str, names: Mapping[str, Any] | tuple[str, ...]) -> bool:
    from aioredq import App

    params = inspect.signature(getattr(App, method)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(name in params for name in names)


def unsupported(feature: Feature, model: str) -> str | None:
    """Why the installed aioredq cannot run ``feature`` on ``model`` (e.g. "App.task() takes
    no timeout="), or None if it can."""
    if model not in feature.models:
        return f"{feature.name} does not apply to {model}"
    for module in feature.needs:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"cannot import {module} ({exc})"
    wanted = [
        ("__init__", feature.app_kwargs, "App()"),
        (DECORATORS[model], tuple(feature.decorator), f"App.{DECORATORS[model]}()"),
    ]
    if model == "task" and feature.enqueue is not None:
        wanted.append(("enqueue", tuple(feature.enqueue(0)), "App.enqueue()"))
    for method, names, shown in wanted:
        if names and not _accepts(method, names):
            return f"{shown} takes no {'=, '.join(names)}="
    return None


def arm(name: str | None) -> tuple[Feature | None, Armed]:
    """In the measured process: the feature and what its setup made (nothing when off)."""
    if name is None:
        return None, Armed()
    feature = BY_NAME[name]
    return feature, feature.setup() if feature.setup is not None else Armed()
