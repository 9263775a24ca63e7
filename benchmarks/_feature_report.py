"""The price of each job feature: its runs against the same model with the feature off."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ._features import BY_NAME, Feature
from ._report import Record, _cell, _pick, _rate, _table, spread

HEADER = [
    "feature",
    "model",
    "part",
    "msg/s on",
    "msg/s off",
    "on/off",
    "CPU us/msg on",
    "CPU us/msg off",
    "+CPU us/msg",
    "+wall us/msg",
]


def summarize(
    records: list[Record], loop: str, priced: Sequence[tuple[Feature, str]]
) -> list[Record]:
    """One row per feature, model and part (consume, produce) that ran: rates, CPU per
    message, the on/off ratio per repetition and the differences of the medians."""
    rows = []
    for feature, model in priced:
        for kind in ("consume", "produce"):
            on = _pick(records, loop=loop, model=model, kind=kind, feature=feature.name)
            if not on:
                continue
            single = on[0].get("single")
            off = _pick(
                records,
                loop=loop,
                model=model,
                kind=kind,
                impl="aioredq",
                feature=None,
                single=single,
            )
            # Only the repetitions that priced the feature (a smoke run prices it once).
            off = [r for r in off if r["rep"] in {mine["rep"] for mine in on}]
            if not off:
                continue
            by_rep = {r["rep"]: r for r in off}
            ratios = [r["rate"] / by_rep[r["rep"]]["rate"] for r in on if r["rep"] in by_rep]
            row: Record = {
                "feature": feature.name,
                "model": model,
                "kind": kind,
                "loop": loop,
                "single": bool(single),
                "on": spread([r["rate"] for r in on]),
                "off": spread([r["rate"] for r in off]),
                "ratio": spread(ratios) if ratios else None,
            }
            cpu_on = [r["cpu_us_per_msg"] for r in on if "cpu_us_per_msg" in r]
            cpu_off = [r["cpu_us_per_msg"] for r in off if "cpu_us_per_msg" in r]
            if cpu_on and cpu_off:
                row["cpu_on"], row["cpu_off"] = spread(cpu_on), spread(cpu_off)
                row["cpu_extra_us"] = statistics.median(cpu_on) - statistics.median(cpu_off)
            row["wall_extra_us"] = 1e6 / row["on"]["median"] - 1e6 / row["off"]["median"]
            rows.append(row)
    return rows


def _us(value: float) -> str:
    return f"{value:.2f}"


def table(rows: list[Record]) -> str:
    lines = []
    for row in rows:
        part = row["kind"] + (" (one enqueue per job)" if row["single"] else "")
        lines.append(
            [
                row["feature"],
                row["model"],
                part,
                _cell(row["on"], _rate),
                _cell(row["off"], _rate),
                _cell(row["ratio"], lambda v: f"{v:.2f}"),
                _cell(row.get("cpu_on"), _us),
                _cell(row.get("cpu_off"), _us),
                f"{row['cpu_extra_us']:+.2f}" if "cpu_extra_us" in row else "-",
                f"{row['wall_extra_us']:+.2f}",
            ]
        )
    return _table(HEADER, lines)


def render(report: Record, loop: str) -> str | None:
    """The feature table with its footnotes, and a line per feature skipped."""
    rows: list[Record] = report.get("features") or []
    skipped: list[str] = report["meta"].get("features_skipped", [])
    parts = []
    if rows:
        shown = dict.fromkeys(row["feature"] for row in rows)
        notes = "\n".join(f"- {name}: {BY_NAME[name].what}" for name in shown)
        parts.append(
            f"the price of each feature (event loop: {loop}): the model with the feature on vs "
            "the plain aioredq run (off), same run\n"
            f"{table(rows)}\n"
            "median [min-max]; on/off per repetition; +CPU = CPU us/msg on - off, +wall = "
            "1e6/(msg/s on) - 1e6/(msg/s off), from the medians; produce rows: batches of "
            "100 through the app's batch API, or one enqueue per job on both sides where "
            "marked\n"
            f"{notes}"
        )
    parts.extend(skipped)
    return "\n".join(parts) if parts else None
