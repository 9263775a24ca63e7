"""Turning run records into medians with their spread, the printed tables and the JSON."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Record = dict[str, Any]
# What the spec asks of aioredq with its defaults (DESIGN.md, "Performance").
CONSUME_TARGET = {"stream": 0.8, "task": 0.8, "pubsub": 0.9}
PRODUCE_TARGET = 0.8
P99_TARGET_MS = 5.0
RSS_TARGET_MB = 100.0


def spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def _pick(records: Iterable[Record], **match: Any) -> list[Record]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _ratios(records: list[Record], kind: str, loop: str, model: str) -> list[float]:
    ratios = []
    for mine in _pick(records, kind=kind, loop=loop, model=model, impl="aioredq"):
        raw = _pick(records, kind=kind, loop=loop, model=model, impl="raw", rep=mine["rep"])
        if raw and raw[0]["rate"] > 0:
            ratios.append(mine["rate"] / raw[0]["rate"])
    return ratios


def summarize(records: list[Record], loops: Sequence[str], models: Sequence[str]) -> Record:
    """``summary[loop][model][metric] = {median, min, max, values}`` plus the RSS runs, of
    the plain runs (a feature's runs are ``_feature_report``'s)."""
    records = [r for r in records if "feature" not in r and "single" not in r]
    summary: Record = {}
    for loop in loops:
        per_model: Record = {}
        for model in models:
            row: Record = {}
            for kind in ("consume", "produce"):
                for impl in ("aioredq", "raw"):
                    rates = [
                        r["rate"]
                        for r in _pick(records, kind=kind, loop=loop, model=model, impl=impl)
                    ]
                    if rates:
                        row[f"{kind}_{impl}"] = spread(rates)
                ratios = _ratios(records, kind, loop, model)
                if ratios:
                    row[f"{kind}_ratio"] = spread(ratios)
            for impl in ("aioredq", "raw"):
                cpu = [
                    r["cpu_us_per_msg"]
                    for r in _pick(records, kind="consume", loop=loop, model=model, impl=impl)
                ]
                if cpu:
                    row[f"consume_cpu_us_{impl}"] = spread(cpu)
            for impl in ("aioredq", "raw"):
                dropped = [
                    r["dropped"]
                    for r in _pick(records, kind="consume", loop=loop, model=model, impl=impl)
                ]
                if dropped:
                    row[f"consume_dropped_{impl}"] = sum(dropped)
            latency = _pick(records, kind="latency", loop=loop, model=model)
            for key in ("p50_ms", "p99_ms", "max_ms"):
                if latency:
                    row[f"latency_{key}"] = spread([r[key] for r in latency])
            rss = _pick(records, kind="rss", loop=loop, model=model)
            if rss:
                row["rss"] = {
                    "messages": rss[0]["messages"],
                    "idle_mb": max(r["rss_start_kb"] for r in rss) / 1024,
                    "peak_mb": max(r["rss_peak_kb"] for r in rss) / 1024,
                    "rate": statistics.median(r["rate"] for r in rss),
                    "dropped": sum(r["dropped"] for r in rss),
                }
            per_model[model] = row
        summary[loop] = per_model
    return summary


# printing ----------------------------------------------------------------------------------
def _rate(value: float) -> str:
    return f"{value / 1000:.1f}k"


def _cell(
    stat: Record | None,
    fmt: Callable[[float], str],
    target: float | None = None,
    low_bad: bool = True,
) -> str:
    if stat is None:
        return "-"
    text = fmt(stat["median"])
    if stat["min"] != stat["max"]:
        low, high = fmt(stat["min"]).rstrip("k"), fmt(stat["max"]).rstrip("k")
        text += f" [{low}-{high}]"
    if target is not None and (stat["median"] < target if low_bad else stat["median"] > target):
        text += " !"
    return text


def _table(header: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    for row in rows:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _ratio(value: float) -> str:
    return f"{value:.2f}"


def _ms(value: float) -> str:
    return f"{value:.2f}"


def main_table(summary: Record, loop: str, models: Sequence[str]) -> str:
    header = [
        "model",
        "consume aioredq msg/s",
        "consume raw msg/s",
        "ratio",
        "produce aioredq msg/s",
        "produce raw msg/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "drops aioredq/raw",
    ]
    rows = []
    for model in models:
        row = summary[loop][model]
        dropped = "-"
        if model == "pubsub" and "consume_dropped_aioredq" in row:
            dropped = f"{row['consume_dropped_aioredq']}/{row.get('consume_dropped_raw', '-')}"
        rows.append(
            [
                model,
                _cell(row.get("consume_aioredq"), _rate),
                _cell(row.get("consume_raw"), _rate),
                _cell(row.get("consume_ratio"), _ratio, CONSUME_TARGET[model]),
                _cell(row.get("produce_aioredq"), _rate),
                _cell(row.get("produce_raw"), _rate),
                _cell(row.get("produce_ratio"), _ratio, PRODUCE_TARGET),
                _cell(row.get("latency_p50_ms"), _ms),
                _cell(row.get("latency_p99_ms"), _ms, P99_TARGET_MS, low_bad=False),
                dropped,
            ]
        )
    return _table(header, rows)


def rss_table(summary: Record, loops: Sequence[str], models: Sequence[str]) -> str | None:
    header = ["model", "loop", "messages", "RSS idle MB", "RSS peak MB", "drain msg/s", "dropped"]
    rows = []
    for model in models:
        for loop in loops:
            rss = summary[loop][model].get("rss")
            if rss is None:
                continue
            peak = f"{rss['peak_mb']:.1f}" + (" !" if rss["peak_mb"] > RSS_TARGET_MB else "")
            rows.append(
                [
                    model,
                    loop,
                    str(rss["messages"]),
                    f"{rss['idle_mb']:.1f}",
                    peak,
                    _rate(rss["rate"]),
                    str(rss["dropped"]),
                ]
            )
    return _table(header, rows) if rows else None


def uvloop_table(summary: Record, models: Sequence[str]) -> str | None:
    if "asyncio" not in summary or "uvloop" not in summary:
        return None
    header = [
        "model",
        "consume aioredq",
        "consume raw",
        "produce aioredq",
        "p99 ms asyncio -> uvloop",
    ]
    rows = []
    for model in models:
        base, fast = summary["asyncio"][model], summary["uvloop"][model]
        p99 = "-"
        if "latency_p99_ms" in base and "latency_p99_ms" in fast:
            p99 = (
                f"{base['latency_p99_ms']['median']:.2f} -> {fast['latency_p99_ms']['median']:.2f}"
            )
        keys = ("consume_aioredq", "consume_raw", "produce_aioredq")
        rows.append([model, *(_change(base, fast, key) for key in keys), p99])
    return _table(header, rows)


def cpu_table(summary: Record, loops: Sequence[str], models: Sequence[str]) -> str | None:
    header = ["model"]
    for loop in loops:
        header += [f"{loop} aioredq", f"{loop} raw", f"{loop} extra"]
    rows = []
    for model in models:
        row = [model]
        for loop in loops:
            mine = summary[loop][model].get("consume_cpu_us_aioredq")
            raw = summary[loop][model].get("consume_cpu_us_raw")
            if mine is None or raw is None:
                return None
            extra = mine["median"] - raw["median"]
            row += [_cell(mine, _ms), _cell(raw, _ms), f"{extra:+.2f}"]
        rows.append(row)
    return _table(header, rows)


def _change(base: Record, fast: Record, key: str) -> str:
    if key not in base or key not in fast or not base[key]["median"]:
        return "-"
    return f"x{fast[key]['median'] / base[key]['median']:.2f}"


LEGEND = (
    "median of the repetitions [min-max]; ratio = aioredq / raw, per repetition. '!' = misses "
    f"the target: consume >= {CONSUME_TARGET['stream']:.1f}x raw (stream, task), >= "
    f"{CONSUME_TARGET['pubsub']:.1f}x (pubsub); produce >= {PRODUCE_TARGET:.1f}x; p99 < "
    f"{P99_TARGET_MS:.0f} ms; RSS peak < {RSS_TARGET_MB:.0f} MB."
)


def render(report: Record, loops: Sequence[str], models: Sequence[str]) -> str:
    """Everything printed after a run: what ran, the main table per loop, then CPU per
    message, peak RSS and what uvloop changes."""
    meta, summary = report["meta"], report["summary"]
    sizes, versions = meta["sizes"], meta["versions"]
    parts = [
        f"aioredq {versions['aioredq']} benchmarks: redis-server {meta['redis_server']}, "
        f"Python {meta['python']}, redis-py {versions['redis-py']}, {meta['cpus']} CPUs, "
        f"load {meta['load_average'][0]:.2f} at start; {meta['reps']} repetition(s)\n"
        f"consume: {sizes['consume']} messages (backlog; pub/sub: published flat out by another "
        f"process); produce: {sizes['produce']} in batches of {sizes['batch']}; latency: "
        f"p50/p99 at {sizes['latency_rates'][0]:.0f} msg/s (other rates: below); RSS: "
        f"{sizes['rss']}-message "
        f"drain\n{LEGEND}"
    ]
    for loop in loops:
        parts.append(f"event loop: {loop}\n{main_table(summary, loop, models)}")
    titled = (
        ("CPU time of the consuming process per message, in microseconds", cpu_table),
        ("peak RSS of the aioredq process (VmHWM) while draining", rss_table),
    )
    for title, table in titled:
        text = table(summary, loops, models)
        if text:
            parts.append(f"{title}\n{text}")
    uv = uvloop_table(summary, models)
    if uv:
        parts.append(f"what uvloop changes (median uvloop / median asyncio)\n{uv}")
    return "\n\n".join(parts)
