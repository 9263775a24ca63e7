"""Runs every measurement against one server: prefill, spawn the measured processes, collect
their results. Each run starts from an empty database."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any

import redis

from ._common import GROUP, IDLE_END, PAD, QUEUE, STREAM, body
from ._features import Feature
from ._server import die_with_parent

PREFILL_CHUNK = 10_000
READY_TIMEOUT = 30.0
STOP_GRACE = 15.0  # a graceful stop may wait out a blocking read (about a second)
STREAM_FILL = """
local base = tonumber(ARGV[1])
for i = 0, tonumber(ARGV[2]) - 1 do
  redis.call('XADD', KEYS[1], '*', 'seq', tostring(base + i), 'ts', '0.0', 'pad', ARGV[3])
end
return 1
"""


@dataclass(frozen=True)
class Sizes:
    consume: int  # backlog drained (task, stream) or messages published (pub/sub)
    produce: int
    batch: int  # bodies per enqueue_many / append_many / publish_many call
    latency: int  # at least this many messages sent at each latency rate
    latency_seconds: float  # ... and at least this long
    rss: int  # backlog drained while watching peak RSS
    webapp: int  # messages enqueued by the web-app producers
    scaling: int  # backlog drained per scaling run (each model; the cluster's total)
    latency_rates: tuple[float, ...] = (1000.0, 10_000.0, 50_000.0)

    def latency_counts(self) -> list[int]:
        return [max(self.latency, int(r * self.latency_seconds)) for r in self.latency_rates]


FULL = Sizes(
    consume=200_000,
    produce=200_000,
    batch=100,
    latency=5_000,
    latency_seconds=0.5,
    rss=1_000_000,
    webapp=30_000,
    scaling=100_000,
)
QUICK = Sizes(
    consume=2_000,
    produce=2_000,
    batch=100,
    latency=300,
    latency_seconds=0.05,
    rss=5_000,
    webapp=3_000,
    scaling=3_000,
)


class RunFailed(RuntimeError):
    pass


class Runner:
    def __init__(self, url: str, sizes: Sizes) -> None:
        self.url = url
        self.sizes = sizes
        self.admin = redis.Redis.from_url(url, socket_timeout=None)
        self._children: list[_Child] = []

    def close(self) -> None:
        """Kill (by pid) whatever measured process is still running, e.g. after Ctrl-C."""
        for child in self._children:
            child.kill()
        self._children.clear()
        self.admin.close()

    # one measurement per call ------------------------------------------------------------
    def consume(
        self,
        model: str,
        impl: str,
        loop: str,
        n: int,
        profile: str | None = None,
        feature: Feature | None = None,
    ) -> dict[str, Any]:
        self._reset()
        timeout = max(120.0, n / 2000)
        job: dict[str, Any] = {"role": "consume", "impl": impl, "model": model, "loop": loop}
        job.update(n=n, timeout=timeout, profile=profile)
        if feature is not None:
            job["feature"] = feature.name
        if model != "pubsub":
            if feature is not None and feature.prefill_through_app(model):
                self._prefill_through_app(model, loop, n, feature, timeout)
            else:
                self._prefill(model, n)
            before = self._server_usage()
            result = self._finish(self._spawn(job), timeout + STOP_GRACE)
        else:
            subscriber = self._spawn(job)
            self._wait_ready(subscriber)
            before = self._server_usage()
            flood = {"role": "flood", "n": n, "batch": 1000}
            published = self._finish(self._spawn(flood), timeout)
            # A subscriber ends IDLE_END after the last message it got; one that got nothing
            # would wait for its whole timeout.
            result = self._finish(subscriber, IDLE_END + STOP_GRACE)
            result["publisher_rate"] = published["rate"]
        result["server"] = self._server_delta(before)
        return result

    def produce(
        self,
        model: str,
        impl: str,
        loop: str,
        feature: Feature | None = None,
        single: bool = False,
    ) -> dict[str, Any]:
        """``single``: one ``enqueue`` per body (tasks), a batch of them at once."""
        self._reset()
        n = self.sizes.produce
        job = {"role": "produce", "impl": impl, "model": model, "loop": loop, "n": n}
        job.update(batch=self.sizes.batch, feature=feature and feature.name, single=single)
        result = self._finish(self._spawn(job), max(120.0, n / 2000))
        if feature is not None and feature.enqueue is not None:
            # Where the feature's jobs live is its own business: count the ids instead.
            stored = result["ids"]
        else:
            stored = {"task": self.admin.llen(QUEUE), "stream": self.admin.xlen(STREAM)}.get(
                model, n
            )
        if stored != n:
            raise RunFailed(f"{impl} produced {stored} of {n} {model} messages")
        return result

    def latency(self, model: str, loop: str) -> dict[str, Any]:
        """One consumer; one producer sending at each of ``latency_rates`` in turn."""
        self._reset()
        rates, counts = list(self.sizes.latency_rates), self.sizes.latency_counts()
        common = {"model": model, "loop": loop, "counts": counts}
        # Generous: the sender may reach far less than the rate asked of it.
        timeout = 30 + sum(c / min(r, 2000.0) for r, c in zip(rates, counts, strict=True))
        consumer = self._spawn({**common, "role": "latency-consumer", "timeout": timeout})
        # The producer starts (imports) meanwhile, and sends once the consumer listens.
        producer = self._spawn({**common, "role": "latency-producer", "rates": rates}, gated=True)
        self._wait_ready(consumer)
        producer.open_gate()
        sent = self._finish(producer, timeout)
        result = self._finish(consumer, IDLE_END + STOP_GRACE)
        for phase, rate, achieved in zip(result["phases"], rates, sent["rates"], strict=True):
            phase.update(target_rate=rate, send_rate=achieved)
        first = result["phases"][0]  # the main table's p50 / p99: the lowest rate
        result.update({key: first[key] for key in ("p50_ms", "p99_ms", "max_ms", "send_rate")})
        return result

    def webapp(self, model: str, impl: str, loop: str) -> dict[str, Any]:
        """``WEBAPP_CALLERS`` coroutines, one producing call per message (``_webapp.py``)."""
        from ._webapp import CALLERS, default_pool_size

        self._reset()
        n = self.sizes.webapp
        job = {"role": "webapp", "impl": impl, "model": model, "loop": loop, "n": n}
        job.update(callers=CALLERS, pool=default_pool_size())
        result = self._finish(self._spawn(job), max(120.0, n / 500))
        stored = self.admin.llen(QUEUE) if model == "task" else self.admin.xlen(STREAM)
        if stored != n:
            raise RunFailed(f"{impl} web-app producers stored {stored} of {n} {model} messages")
        return result

    # plumbing ----------------------------------------------------------------------------
    def _server_usage(self) -> float:
        """Reset the command counters; return the server's CPU seconds so far."""
        self.admin.config_resetstat()
        cpu = self.admin.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def _server_delta(self, cpu_before: float) -> dict[str, Any]:
        """What the server did for one run: its CPU seconds and the calls of each command
        (round trips per message, script loads, extra commands), for the JSON."""
        cpu = self.admin.info("cpu")
        stats = self.admin.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        for ours in ("config|resetstat", "info"):  # the harness's own
            calls.pop(ours, None)
        used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]) - cpu_before
        return {"cpu_s": round(used, 3), "calls": calls}

    def _reset(self) -> None:
        self.admin.flushall()
        self.admin.script_flush()

    def _prefill(self, model: str, n: int) -> None:
        if model == "stream":
            self.admin.xgroup_create(STREAM, GROUP, "0", mkstream=True)
            fill = self.admin.register_script(STREAM_FILL)
            for base in range(0, n, PREFILL_CHUNK):
                fill(keys=[STREAM], args=[base, min(PREFILL_CHUNK, n - base), PAD])
            return
        # Items exactly as aioredq enqueues them (envelopes), made by its own encoder.
        from aioredq._codec import encode_envelope, new_id

        for base in range(0, n, PREFILL_CHUNK):
            items = [
                encode_envelope(body(i), msg_id=new_id())
                for i in range(base, min(base + PREFILL_CHUNK, n))
            ]
            self.admin.lpush(QUEUE, *items)

    def _prefill_through_app(
        self, model: str, loop: str, n: int, feature: Feature, timeout: float
    ) -> None:
        """The backlog written by the app with ``feature`` on (its enqueue keywords, its
        produce hooks): the same bodies as ``_prefill``, in the feature's data layout."""
        if model == "stream":
            self.admin.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        single = model == "task" and not feature.batched()
        job = {"role": "prefill", "impl": "aioredq", "model": model, "loop": loop, "n": n}
        # One enqueue per body: a batch's worth at once; otherwise large batches, for speed.
        job.update(batch=self.sizes.batch if single else PREFILL_CHUNK, single=single)
        job["feature"] = feature.name
        written = self._finish(self._spawn(job), timeout)
        if written.get("ids") != n:
            raise RunFailed(f"the {feature.name} prefill wrote {written.get('ids')} of {n}")

    def _spawn(self, job: dict[str, Any], gated: bool = False) -> _Child:
        """``gated``: the process loads what it needs, then waits for ``open_gate``."""
        job = {"url": self.url, **job, "gated": gated}
        stderr = tempfile.TemporaryFile()  # shown only when the run fails
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._child", json.dumps(job)],
            stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=die_with_parent,
        )
        child = _Child(proc, job, stderr)
        self._children.append(child)
        return child

    def _wait_ready(self, child: _Child) -> None:
        line = child.line(READY_TIMEOUT)
        if line != "READY":
            raise RunFailed(child.failure(f"said {line!r} instead of READY"))

    def _finish(self, child: _Child, timeout: float) -> dict[str, Any]:
        line = child.line(timeout)
        try:
            child.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            raise RunFailed(child.failure(f"did not exit within {STOP_GRACE:.0f} s")) from None
        if child.proc.returncode != 0 or not line.startswith("RESULT "):
            raise RunFailed(child.failure(f"exited {child.proc.returncode}: {line!r}"))
        child.stderr.close()
        self._children.remove(child)
        result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
        return result


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    job: dict[str, Any]
    stderr: IO[bytes]

    def line(self, timeout: float) -> str:
        """The next protocol line (``READY`` or ``RESULT ...``) within ``timeout`` seconds;
        anything else the process prints is ignored."""
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            if not select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise RunFailed(self.failure(f"gave no result within {timeout:.0f} s"))
            line = stdout.readline().decode()
            if not line:
                self.proc.wait()
                raise RunFailed(self.failure("ended without a result"))
            if line.startswith(("READY", "RESULT ")):
                return line.strip()

    def open_gate(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(b"GO\n")
        stdin.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def failure(self, what: str) -> str:
        self.kill()
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace")[-3000:]
        self.stderr.close()
        return f"{self.job['role']} run {json.dumps(self.job)} {what}\n{tail}"
