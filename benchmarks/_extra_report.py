"""The tables of the ``webapp``, ``latency`` (by send rate) and ``scaling`` parts: medians of
the repetitions with their spread, ratios taken per repetition, as in ``_report``."""

from __future__ import annotations

from collections.abc import Sequence

from ._report import Record, _cell, _ms, _pick, _rate, _ratio, _table, spread

WEBAPP_MODELS = ("task", "stream")
WEBAPP_TARGET = 0.9


def _paired_ratios(mine: list[Record], base: list[Record], key: str = "rate") -> list[float]:
    """mine / base per repetition (the runs of one repetition measured back to back)."""
    by_rep = {r["rep"]: r[key] for r in base}
    return [r[key] / by_rep[r["rep"]] for r in mine if by_rep.get(r["rep"])]


def _webapp(records: list[Record], loops: Sequence[str], models: Sequence[str]) -> Record:
    out: Record = {}
    for loop in loops:
        for model in (m for m in models if m in WEBAPP_MODELS):
            runs = {
                impl: _pick(records, kind="webapp", loop=loop, model=model, impl=impl)
                for impl in ("aioredq", "raw")
            }
            if not runs["aioredq"] or not runs["raw"]:
                continue
            row: Record = {"callers": runs["aioredq"][0]["callers"]}
            row["pool"] = runs["aioredq"][0]["pool"]
            for impl, found in runs.items():
                row[impl] = spread([r["rate"] for r in found])
                row[f"cpu_us_{impl}"] = spread([r["cpu_us_per_msg"] for r in found])
            row["ratio"] = spread(_paired_ratios(runs["aioredq"], runs["raw"]))
            out.setdefault(loop, {})[model] = row
    return out


def _latency_rates(records: list[Record], loops: Sequence[str], models: Sequence[str]) -> Record:
    out: Record = {}
    for loop in loops:
        for model in models:
            runs = _pick(records, kind="latency", loop=loop, model=model)
            if not runs:
                continue
            rows = []
            for k, first in enumerate(runs[0]["phases"]):
                phases = [r["phases"][k] for r in runs]
                row: Record = {"target_rate": first["target_rate"]}
                for key in ("send_rate", "p50_ms", "p99_ms", "max_ms"):
                    row[key] = spread([p[key] for p in phases])
                row["dropped"] = sum(p["dropped"] for p in phases)
                rows.append(row)
            out.setdefault(loop, {})[model] = rows
    return out


def _scaling(records: list[Record]) -> Record:
    out: Record = {}
    workers = {w: _pick(records, kind="scaling-workers", workers=w) for w in (1, 2)}
    if workers[1] and workers[2]:
        for model in ("task", "stream"):
            flat = {
                w: [r | {"rate": r[model]["rate"]} for r in runs] for w, runs in workers.items()
            }
            out.setdefault("workers", {})[model] = {
                "1": spread([r["rate"] for r in flat[1]]),
                "2": spread([r["rate"] for r in flat[2]]),
                "ratio": spread(_paired_ratios(flat[2], flat[1])),
            }
    masters = {m: _pick(records, kind="scaling-cluster", masters=m) for m in (1, 3)}
    if masters[1] and masters[3]:
        out["cluster"] = {
            "queues": masters[1][0]["queues"],
            "1": spread([r["rate"] for r in masters[1]]),
            "3": spread([r["rate"] for r in masters[3]]),
            "ratio": spread(_paired_ratios(masters[3], masters[1])),
        }
    return out


def summarize(records: list[Record], loops: Sequence[str], models: Sequence[str]) -> Record:
    return {
        "webapp": _webapp(records, loops, models),
        "latency_rates": _latency_rates(records, loops, models),
        "scaling": _scaling(records),
    }


# printing ----------------------------------------------------------------------------------
def webapp_table(summary: Record) -> str | None:
    header = ["model", "loop", "aioredq msg/s", "raw msg/s", "ratio", "CPU us/msg aioredq/raw"]
    rows = []
    for loop, per_model in summary["webapp"].items():
        for model, row in per_model.items():
            cpu = f"{row['cpu_us_aioredq']['median']:.1f}/{row['cpu_us_raw']['median']:.1f}"
            rows.append(
                [
                    model,
                    loop,
                    _cell(row["aioredq"], _rate),
                    _cell(row["raw"], _rate),
                    _cell(row["ratio"], _ratio, WEBAPP_TARGET),
                    cpu,
                ]
            )
    return _table(header, rows) if rows else None


def latency_table(summary: Record) -> str | None:
    header = ["model", "loop", "asked msg/s", "sent msg/s", "p50 ms", "p99 ms", "max ms", "dropped"]
    rows = []
    for loop, per_model in summary["latency_rates"].items():
        for model, phases in per_model.items():
            for row in phases:
                rows.append(
                    [
                        model,
                        loop,
                        _rate(row["target_rate"]),
                        _cell(row["send_rate"], _rate),
                        _cell(row["p50_ms"], _ms),
                        _cell(row["p99_ms"], _ms),
                        _cell(row["max_ms"], _ms),
                        str(row["dropped"]),
                    ]
                )
    return _table(header, rows) if rows else None


def workers_table(summary: Record) -> str | None:
    workers = summary["scaling"].get("workers")
    if not workers:
        return None
    header = ["model", "--workers 1 msg/s", "--workers 2 msg/s", "ratio 2/1"]
    rows = [
        [model, _cell(row["1"], _rate), _cell(row["2"], _rate), _cell(row["ratio"], _ratio)]
        for model, row in workers.items()
    ]
    return _table(header, rows)


def cluster_table(summary: Record) -> str | None:
    cluster = summary["scaling"].get("cluster")
    if not cluster:
        return None
    header = ["task queues", "1 master msg/s", "3 masters msg/s", "ratio 3/1"]
    row = [str(cluster["queues"]), _cell(cluster["1"], _rate), _cell(cluster["3"], _rate)]
    return _table(header, [[*row, _cell(cluster["ratio"], _ratio)]])


def render(report: Record) -> str:
    """The new parts' tables, each under its title (nothing for a part not run)."""
    from ._scaling import FOOTNOTE
    from ._webapp import CALLERS

    summary, meta = report["extra"], report["meta"]
    sizes = meta["sizes"]
    pool = next((row["pool"] for rows in summary["webapp"].values() for row in rows.values()), 0)
    titled = (
        (
            f"web-app producers: {CALLERS} coroutines, one call per message, "
            f"{sizes['webapp']} messages; aioredq enqueue/append with a default App ({pool} "
            f"producing calls in flight) vs redis-py LPUSH/XADD over a "
            f"BlockingConnectionPool({pool}); '!' = ratio < {WEBAPP_TARGET}",
            webapp_table,
        ),
        (
            "latency by send rate: produce -> handler start; every 1 ms the messages due, in "
            "one enqueue_many/append_many/publish_many call; 'sent' is the rate reached",
            latency_table,
        ),
        (
            f"scaling: python -m aioredq --workers 1 vs 2 draining {sizes['scaling']} tasks, "
            f"then {sizes['scaling']} stream entries",
            workers_table,
        ),
        (
            f"scaling: a local Redis Cluster, 1 vs 3 masters, one worker draining "
            f"{sizes['scaling']} tasks over its queues",
            cluster_table,
        ),
    )
    parts = []
    for title, table in titled:
        text = table(summary)
        if text:
            parts.append(f"{title}\n{text}")
    notes = meta.get("scaling_notes", [])
    if summary["scaling"] or notes:
        parts.append("\n".join([*notes, FOOTNOTE.format(cpus=meta["cpus"])]))
    return "\n\n".join(parts)
