"""Entry point of one measured process: ``python -m benchmarks._child '<json job>'``.

Each measurement runs in a fresh interpreter, so one run's heap, caches and event loop never
leak into the next, peak RSS (``VmHWM``) belongs to that run alone, and the loop policy
(asyncio or uvloop) is chosen before anything starts.
"""

from __future__ import annotations

import asyncio
import cProfile
import importlib
import json
import sys
from typing import Any

from ._common import emit


def _job(job: dict[str, Any]) -> Any:
    role, impl, url, model = job["role"], job.get("impl"), job["url"], job.get("model", "")
    if role == "webapp":
        from . import _webapp

        return _webapp.produce(impl, url, model, job["n"], job["callers"], job["pool"])
    if role == "latency-consumer":
        from . import _latency

        return _latency.latency_consumer(url, model, job["counts"], job["timeout"])
    if role == "latency-producer":
        from . import _latency

        return _latency.latency_producer(url, model, job["rates"], job["counts"])
    # Imported on demand: a raw baseline process never loads aioredq (nor pydantic).
    side = importlib.import_module("._app_runs" if impl == "aioredq" else "._raw_runs", __package__)
    # Features, and one enqueue per body, are the aioredq side's alone (never in a raw job).
    options = {key: job[key] for key in ("feature", "single") if job.get(key)}
    if role == "consume":
        return side.consume(url, model, job["n"], job["timeout"], **options)
    if role == "produce":
        return side.produce(url, model, job["n"], job["batch"], **options)
    if role == "prefill":  # a feature's backlog, written through the app (impl "aioredq")
        return side.produce(url, model, job["n"], job["batch"], **options, timed=False)
    raise SystemExit(f"unknown role {role!r}")


def main() -> None:
    job = json.loads(sys.argv[1])
    if job["role"] == "flood":  # a plain socket, no event loop
        from ._raw_runs import flood

        emit("RESULT", flood(job["url"], job["n"], job["batch"]))
        return
    coro = _job(job)  # imports what the run needs
    if job.get("gated"):  # the parent says when to start
        sys.stdin.readline()
    profiler = cProfile.Profile() if job.get("profile") else None
    if profiler is not None:
        profiler.enable()
    if job.get("loop") == "uvloop":
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(job["profile"])
    emit("RESULT", result)


if __name__ == "__main__":
    main()
