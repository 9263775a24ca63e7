"""``python -m benchmarks --quick`` runs end to end and reports every row (no timing asserts)."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("stream", "task", "pubsub")
LOOPS = ("asyncio", "uvloop")


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> tuple[str, dict[str, Any]]:
    """One quick run for the whole session: under xdist the first worker to get here makes
    it and the others read it (the directory above each worker's is the session's)."""
    pytest.importorskip("uvloop")
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    out, done_file = shared / "bench-quick.json", shared / "bench-quick.out.json"
    with (shared / "bench-quick.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done_file.exists():
            # The feature rows have a run of their own below: this one keeps its size.
            done = _bench(
                "--quick --reps 1 --loops asyncio,uvloop --features none --json",
                str(out),
                timeout=240,
            )
            result = {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
            done_file.write_text(json.dumps(result))
    result = json.loads(done_file.read_text())
    assert result["rc"] == 0, result["stderr"][-4000:]
    return result["stdout"], json.loads(out.read_text())


def _bench(options: str, *more: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks`` with these options, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *options.split(), *more],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _rows(text: str, header: str) -> list[list[str]]:
    """The rows of the table printed under ``header``, split into cells."""
    lines = text.split(header, 1)[1].splitlines()
    rows = []
    for line in lines[3:]:  # below the rest of the title line, the column names and the rule
        if "|" not in line:
            break
        rows.append([cell.strip() for cell in line.split("|")])
    return rows


def test_each_loop_has_a_full_row_per_model(quick_run: tuple[str, dict[str, Any]]) -> None:
    text, _ = quick_run
    for loop in LOOPS:
        rows = _rows(text, f"event loop: {loop}")
        assert [row[0] for row in rows] == list(MODELS)
        for row in rows:
            # consume, raw consume, ratio, produce, raw produce, ratio, p50, p99
            assert all(cell not in ("", "-") for cell in row[1:9]), row


def test_cpu_rss_and_uvloop_tables_cover_every_model(quick_run: tuple[str, dict[str, Any]]) -> None:
    text, _ = quick_run
    rss = _rows(text, "peak RSS of the aioredq process")
    assert sorted((row[0], row[1]) for row in rss) == sorted(
        (model, loop) for model in MODELS for loop in LOOPS
    )
    assert all(float(row[4]) > 0 for row in rss)
    uv = _rows(text, "what uvloop changes")
    assert [row[0] for row in uv] == list(MODELS)
    cpu = _rows(text, "CPU time of the consuming process per message")
    assert [row[0] for row in cpu] == list(MODELS)
    assert all(float(cell.split()[0]) > 0 for row in cpu for cell in row[1:3])


def test_json_has_the_same_numbers(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, data = quick_run
    for loop in LOOPS:
        for model in MODELS:
            row = data["summary"][loop][model]
            for key in ("consume_aioredq", "consume_raw", "produce_aioredq", "produce_raw"):
                assert row[key]["median"] > 0, (loop, model, key)
            for key in ("consume_ratio", "produce_ratio", "latency_p50_ms", "latency_p99_ms"):
                assert row[key]["min"] <= row[key]["median"] <= row[key]["max"], (loop, key)
            assert row["rss"]["peak_mb"] >= row["rss"]["idle_mb"] > 0


def test_backlogs_are_drained_and_acknowledged(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, data = quick_run
    drains = [
        r for r in data["records"] if r["kind"] in ("consume", "rss") and r["model"] != "pubsub"
    ]
    assert len(drains) == 2 * 2 * len(LOOPS) + 2 * len(LOOPS)  # both impls + the RSS runs
    for run in drains:
        assert run["dropped"] == 0 and run["count"] > 0, run
        assert run.get("failed", 0) == 0, run


def _number(cell: str) -> float:
    """A table cell's median: ``12.3k [11.0-13.1] !`` -> 12300.0."""
    first = cell.split()[0]
    return float(first.rstrip("k")) * (1000 if first.endswith("k") else 1)


def test_webapp_rows_compare_one_call_per_message(quick_run: tuple[str, dict[str, Any]]) -> None:
    text, data = quick_run
    rows = _rows(text, "web-app producers: 1000 coroutines")
    # A smoke run has them under the first loop only.
    assert [(row[0], row[1]) for row in rows] == [("stream", "asyncio"), ("task", "asyncio")]
    for row in rows:
        assert _number(row[2]) > 0 and _number(row[3]) > 0 and _number(row[4]) > 0, row
    webapp = data["extra"]["webapp"]["asyncio"]
    assert webapp["task"]["pool"] == 50 and webapp["task"]["callers"] == 1000
    runs = [r for r in data["records"] if r["kind"] == "webapp"]
    assert sorted((r["model"], r["impl"]) for r in runs) == [
        ("stream", "aioredq"),
        ("stream", "raw"),
        ("task", "aioredq"),
        ("task", "raw"),
    ]


def test_latency_is_measured_at_each_rate(quick_run: tuple[str, dict[str, Any]]) -> None:
    text, data = quick_run
    rows = _rows(text, "latency by send rate")
    expected = [(m, loop, r) for loop in LOOPS for m in MODELS for r in ("1.0k", "10.0k", "50.0k")]
    assert [(row[0], row[1], row[2]) for row in rows] == expected
    for row in rows:
        sent, p50, p99, most = (_number(cell) for cell in row[3:7])
        assert sent > 0 and 0 < p50 <= p99 <= most, row
        assert row[7] == "0", row  # nothing lost
    for loop in LOOPS:
        for model in MODELS:
            phases = data["extra"]["latency_rates"][loop][model]
            assert [p["target_rate"] for p in phases] == [1000.0, 10000.0, 50000.0]
            # The main table's p50 is the lowest rate's.
            main = data["summary"][loop][model]["latency_p50_ms"]["median"]
            assert main == phases[0]["p50_ms"]["median"]


def test_scaling_rows_drain_with_more_workers_and_masters(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    text, data = quick_run
    rows = _rows(text, "scaling: python -m aioredq --workers 1 vs 2")
    assert [row[0] for row in rows] == ["task", "stream"]
    assert all(_number(cell) > 0 for row in rows for cell in row[1:4]), rows
    assert "the second worker and the extra masters share them" in text
    workers = [r for r in data["records"] if r["kind"] == "scaling-workers"]
    assert sorted(r["workers"] for r in workers) == [1, 2]
    skipped = data["meta"]["scaling_notes"]
    if skipped:  # a redis-server without cluster support: one line says so
        assert skipped[0].startswith("cluster rows skipped: ") and skipped[0] in text
        return
    (row,) = _rows(text, "scaling: a local Redis Cluster, 1 vs 3 masters")
    assert row[0] == "6" and all(_number(cell) > 0 for cell in row[1:4]), row
    cluster = data["extra"]["scaling"]["cluster"]
    assert cluster["1"]["median"] > 0 and cluster["3"]["median"] > 0


def test_bad_latency_rates_are_refused() -> None:
    done = _bench("--quick --latency-rates 1000,0")
    assert done.returncode == 2 and "--latency-rates: positive numbers" in done.stderr


def test_a_feature_row_prices_middleware_against_the_plain_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    options = "--quick --reps 1 --loops asyncio --models task --parts consume"
    done = _bench(f"{options} --features middleware --json", str(out))
    assert done.returncode == 0, done.stderr[-4000:]
    (row,) = _rows(done.stdout, "the price of each feature")
    feature, model, part, on, off, ratio, cpu_on, cpu_off, extra, _wall = row
    assert (feature, model, part) == ("middleware", "task", "consume")
    assert float(on.rstrip("k")) > 0 and float(off.rstrip("k")) > 0 and float(ratio) > 0
    assert float(cpu_on) > 0 and float(cpu_off) > 0
    assert float(extra) == pytest.approx(float(cpu_on) - float(cpu_off), abs=0.011)
    assert "one no-op middleware" in done.stdout
    data = json.loads(out.read_text())
    runs = [r for r in data["records"] if r["kind"] == "consume" and r["impl"] == "aioredq"]
    # The feature-on run and the plain run it is priced against, each draining the backlog.
    assert sorted(r.get("feature") or "" for r in runs) == ["", "middleware"]
    assert all(r["dropped"] == 0 and r["failed"] == 0 for r in runs), runs
    (priced,) = data["features"]
    assert priced["on"]["median"] == next(r["rate"] for r in runs if r.get("feature"))
    assert priced["off"]["median"] == next(r["rate"] for r in runs if not r.get("feature"))


def test_an_unknown_feature_is_refused() -> None:
    done = _bench("--quick --features middleware,nosuch")
    assert done.returncode == 2 and "--features: choose from" in done.stderr


def test_a_keyword_the_package_does_not_take_skips_the_feature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks._features import FEATURES, Feature, unsupported

    future = Feature("future", ("task", "stream"), "-", decorator={"no_such_option": 1})
    assert unsupported(future, "task") == "App.task() takes no no_such_option="
    assert unsupported(future, "pubsub") == "future does not apply to pubsub"
    by_enqueue = Feature("keyed", ("task",), "-", enqueue=lambda i: {"no_such_kw": i})
    assert "App.enqueue() takes no no_such_kw=" in str(unsupported(by_enqueue, "task"))
    middleware = next(f for f in FEATURES if f.name == "middleware")
    assert unsupported(middleware, "stream") is None
