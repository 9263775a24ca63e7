"""``python -m benchmarks``: aioredq against raw redis-py loops, same server, same run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from . import _extra_report, _feature_report, _report, _scaling
from ._cluster import ClusterUnavailable, local_clusters
from ._cluster import unavailable as cluster_unavailable
from ._common import MODELS
from ._features import BY_NAME, Feature, unsupported
from ._runner import FULL, QUICK, RunFailed, Runner, Sizes
from ._server import BenchServer

LOOPS = ("asyncio", "uvloop")
CLUSTER_SIZES = (1, 3)  # masters
PARTS = ("consume", "produce", "latency", "rss", "webapp", "scaling")


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what}: choose from {', '.join(allowed)}")
    return names


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        rates = ()
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("--latency-rates: positive numbers, e.g. 1000,10000")
    return rates


def _feature_names(text: str) -> list[str]:
    return [] if text.strip() == "none" else _names(text, tuple(BY_NAME), "--features")


def _add_size_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, help="messages per consume/produce run")
    parser.add_argument("--rss-size", type=int, help="backlog drained in the RSS run")
    parser.add_argument("--webapp-size", type=int, help="messages per web-app producer run")
    parser.add_argument(
        "--scaling-size",
        type=int,
        help="backlog per scaling run: each of task and stream; the cluster's total",
    )
    parser.add_argument(
        "--latency-count",
        type=int,
        help="at least this many messages at each latency rate (default 5000; quick 300)",
    )
    parser.add_argument(
        "--latency-rates",
        type=_rates,
        metavar="R,R,...",
        help="send rates of the latency part, msg/s (default 1000,10000,50000); each rate "
        "sends for at least half a second at its rate (0.05 s with --quick)",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="aioredq (default options, no-op handlers) against the fastest honest raw "
        "redis-py loops, on a redis-server started for the run.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, one repetition and asyncio only unless --reps or --loops say "
        "otherwise (a smoke run)",
    )
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument(
        "--models",
        type=lambda t: _names(t, MODELS, "--models"),
        default=list(MODELS),
        help="comma-separated: stream,task,pubsub",
    )
    parser.add_argument(
        "--loops",
        type=lambda t: _names(t, LOOPS, "--loops"),
        default=None,
        help="event loops to run under: asyncio,uvloop (default both; asyncio with --quick)",
    )
    parser.add_argument(
        "--parts",
        type=lambda t: _names(t, PARTS, "--parts"),
        default=list(PARTS),
        help=f"what to measure: {','.join(PARTS)} (default all)",
    )
    parser.add_argument(
        "--features",
        type=_feature_names,
        default=list(BY_NAME),
        help="job features to price, each on vs off in the same run, under the first of "
        f"--loops: {','.join(BY_NAME)}; 'none' for none (default: all the installed "
        "aioredq accepts)",
    )
    _add_size_options(parser)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="afterwards, run each aioredq consumer once more under cProfile; "
        "write DIR/<loop>-<model>.prof and print the costliest functions",
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.loops is None:
        args.loops = ["asyncio"] if args.quick else list(LOOPS)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    return args


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    overrides = {
        "consume": args.size,
        "produce": args.size,
        "rss": args.rss_size,
        "latency": args.latency_count,
        "webapp": args.webapp_size,
        "scaling": args.scaling_size,
    }
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v})
    if args.latency_rates:
        sizes = dataclasses.replace(sizes, latency_rates=args.latency_rates)
    return sizes


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _meta(runner: Runner, args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    import redis

    import aioredq

    versions = {"aioredq": aioredq.__version__, "redis-py": redis.__version__}
    try:
        import uvloop

        versions["uvloop"] = str(getattr(uvloop, "__version__", "?"))
    except ImportError:
        pass
    return {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "redis_server": runner.admin.info("server")["redis_version"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "versions": versions,
        "reps": args.reps,
        "sizes": dataclasses.asdict(sizes),
    }


Measure = Callable[[], dict[str, Any]]
# What a measurement is (rep, loop, model, kind, impl; feature and single when set), and
# the call that makes it.
Step = tuple[dict[str, Any], Measure]
Priced = list[tuple[Feature, str]]  # (feature, model) pairs to measure


def _plan(runner: Runner, args: argparse.Namespace, sizes: Sizes, priced: Priced) -> Iterator[Step]:
    """Every measurement, in order."""
    for rep in range(args.reps):
        # Alternate who goes first, so a slow start or a noisy neighbour is shared.
        order = ("aioredq", "raw") if rep % 2 == 0 else ("raw", "aioredq")
        for loop in args.loops:
            for model in args.models:
                at = {"rep": rep, "loop": loop, "model": model}
                yield from _model_steps(runner, args, at, order)
                # Under the first loop only; a smoke run (--quick) prices them once.
                if loop == args.loops[0] and not (args.quick and rep):
                    features = [f for f, m in priced if m == model]
                    yield from _feature_steps(runner, args, sizes, at, features)
    if "rss" in args.parts:  # one large drain per model and loop: a peak, not a rate
        for loop in args.loops:
            for model in args.models:
                yield (
                    {"rep": 0, "loop": loop, "model": model, "kind": "rss", "impl": "aioredq"},
                    partial(runner.consume, model, "aioredq", loop, sizes.rss),
                )
    if "scaling" in args.parts:
        yield from _scaling_steps(runner, args, sizes)


def _model_steps(
    runner: Runner, args: argparse.Namespace, at: dict[str, Any], order: tuple[str, str]
) -> Iterator[Step]:
    """The plain runs of one model under one loop in one repetition."""
    model, loop = at["model"], at["loop"]
    for kind, measure in (("consume", runner.consume), ("produce", runner.produce)):
        if kind in args.parts:
            for impl in order:
                extra = (runner.sizes.consume,) if kind == "consume" else ()
                yield (
                    at | {"kind": kind, "impl": impl},
                    partial(measure, model, impl, loop, *extra),
                )
    if "latency" in args.parts:
        yield at | {"kind": "latency", "impl": "aioredq"}, partial(runner.latency, model, loop)
    # A smoke run (--quick) has them under the first loop only.
    first = loop == args.loops[0] or not args.quick
    if "webapp" in args.parts and model in _extra_report.WEBAPP_MODELS and first:
        for impl in order:
            yield (
                at | {"kind": "webapp", "impl": impl},
                partial(runner.webapp, model, impl, loop),
            )


def _scaling_steps(runner: Runner, args: argparse.Namespace, sizes: Sizes) -> Iterator[Step]:
    """The command line with 1 and 2 workers, then a cluster of 1 and 3 masters, per
    repetition (the order alternating); the event loop is the command line's own."""
    from aioredq._loop import loop_name

    at = {"loop": loop_name(), "model": "task+stream", "impl": "aioredq"}
    for rep in range(args.reps):
        for workers in (1, 2) if rep % 2 == 0 else (2, 1):
            yield (
                at | {"rep": rep, "kind": "scaling-workers", "workers": workers},
                partial(_scaling.workers_run, runner.admin, runner.url, workers, sizes.scaling),
            )
    yield from _cluster_steps(args, sizes, at | {"kind": "scaling-cluster", "model": "task"})


def _cluster_steps(args: argparse.Namespace, sizes: Sizes, at: dict[str, Any]) -> Iterator[Step]:
    """Both clusters live while their steps run; one that cannot start is a skipped step."""
    why = cluster_unavailable()
    with contextlib.ExitStack() as stack:
        if why is None:
            try:
                urls = stack.enter_context(local_clusters(CLUSTER_SIZES))
            except ClusterUnavailable as exc:
                why = str(exc)
        if why is not None:
            yield at | {"rep": 0}, lambda: {"skipped": f"cluster rows skipped: {why}"}
            return
        for rep in range(args.reps):
            for masters in CLUSTER_SIZES if rep % 2 == 0 else CLUSTER_SIZES[::-1]:
                yield (
                    at | {"rep": rep, "masters": masters},
                    partial(_scaling.cluster_run, urls[masters], sizes.scaling),
                )


def _shown(label: dict[str, Any], result: dict[str, Any]) -> str:
    """One measurement in the progress lines."""
    kind = label["kind"]
    if kind == "latency":
        return "latency " + ", ".join(
            f"{p['target_rate'] / 1000:g}k/s p99 {p['p99_ms']:.2f} ms" for p in result["phases"]
        )
    if kind == "scaling-workers":
        task, stream = result["task"]["rate"], result["stream"]["rate"]
        return f"{kind} {label['workers']}: task {task:,.0f} msg/s, stream {stream:,.0f} msg/s"
    what = " ".join(
        [kind, label["impl"], *([label["feature"]] if "feature" in label else [])]
        + (["(one enqueue per job)"] if label.get("single") else [])
        + ([f"{label['workers']} workers"] if "workers" in label else [])
        + ([f"{label['masters']} masters"] if "masters" in label else [])
    )
    return f"{what}: {result['rate']:,.0f} msg/s"


def _feature_steps(
    runner: Runner,
    args: argparse.Namespace,
    sizes: Sizes,
    at: dict[str, Any],
    features: list[Feature],
) -> Iterator[Step]:
    """The feature-on runs of one model; their feature-off rows are the plain aioredq runs
    above, except one enqueue per job (a feature without a batch form), measured here once."""
    model, loop = at["model"], at["loop"]
    mine = at | {"impl": "aioredq"}
    single_off: list[Step] = []
    for feature in features:
        if "consume" in args.parts:
            yield (
                mine | {"kind": "consume", "feature": feature.name},
                partial(runner.consume, model, "aioredq", loop, sizes.consume, feature=feature),
            )
        if "produce" not in args.parts or not feature.produce:
            continue
        single = model == "task" and not feature.batched()
        label = mine | {"kind": "produce", "feature": feature.name}
        on: Step = (
            label | ({"single": True} if single else {}),
            partial(runner.produce, model, "aioredq", loop, feature, single),
        )
        if single and not single_off:
            single_off.append(
                (
                    mine | {"kind": "produce", "single": True},
                    partial(runner.produce, model, "aioredq", loop, None, True),
                )
            )
            yield from [on, *single_off] if at["rep"] % 2 == 0 else [*single_off, on]
        else:
            yield on


def _priced(args: argparse.Namespace) -> tuple[Priced, list[str]]:
    """The (feature, model) pairs to measure, and one line per feature skipped somewhere."""
    priced: Priced = []
    notes = []
    for name in args.features:
        feature = BY_NAME[name]
        skipped: dict[str, list[str]] = {}  # why -> models
        for model in args.models:
            if model not in feature.models:
                continue
            why = unsupported(feature, model)
            if why is None:
                priced.append((feature, model))
            else:
                skipped.setdefault(why, []).append(model)
        if skipped:
            where = sorted({m for models in skipped.values() for m in models}, key=MODELS.index)
            why = "; ".join(skipped)
            notes.append(f"skipped {name} on {', '.join(where)}, the installed aioredq: {why}")
    return priced, notes


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = _sizes(args)
    records: list[dict[str, Any]] = []
    priced, notes = _priced(args)
    for note in notes:
        _progress(note)
    with BenchServer() as server:
        runner = Runner(server.url, sizes)
        try:
            meta = _meta(runner, args, sizes)
            meta["features_skipped"] = notes
            meta["scaling_notes"] = skipped = []
            for label, measure in _plan(runner, args, sizes, priced):
                took = time.perf_counter()
                result = measure()
                took = time.perf_counter() - took
                if "skipped" in result:
                    if result["skipped"] not in skipped:
                        skipped.append(result["skipped"])
                        _progress(result["skipped"])
                    continue
                if label["kind"] == "rss":
                    result["messages"] = sizes.rss
                records.append(label | result)
                _progress(
                    f"[{label['rep'] + 1}/{args.reps} {label['loop']} {label['model']}] "
                    f"{_shown(label, result)} ({took:.1f} s)"
                )
            profiles = _profile(runner, args, sizes) if args.profile else {}
        finally:
            runner.close()
    return {
        "meta": meta,
        "summary": _report.summarize(records, args.loops, args.models),
        "features": _feature_report.summarize(records, args.loops[0], priced),
        "extra": _extra_report.summarize(records, args.loops, args.models),
        "records": records,
        "profiles": profiles,
    }


def _profile(runner: Runner, args: argparse.Namespace, sizes: Sizes) -> dict[str, str]:
    args.profile.mkdir(parents=True, exist_ok=True)
    found = {}
    for loop in args.loops:
        for model in args.models:
            path = args.profile / f"{loop}-{model}.prof"
            runner.consume(model, "aioredq", loop, sizes.consume, profile=str(path))
            found[f"{loop}-{model}"] = str(path)
    return found


def _print_profiles(profiles: dict[str, str]) -> None:
    for name, path in profiles.items():
        print(f"\ncProfile of the aioredq {name} consumer (top 20 by own time): {path}")
        pstats.Stats(path, stream=sys.stdout).sort_stats("tottime").print_stats(20)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if "uvloop" in args.loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            _progress("uvloop is not installed (pip install 'aioredq[fast]'): asyncio only")
            args.loops = [loop for loop in args.loops if loop != "uvloop"] or ["asyncio"]
    try:
        report = run(args)
    except RunFailed as exc:
        print(f"benchmark run failed: {exc}", file=sys.stderr)
        return 1
    print(_report.render(report, args.loops, args.models))
    for text in (_extra_report.render(report), _feature_report.render(report, args.loops[0])):
        if text:
            print(f"\n{text}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    _print_profiles(report["profiles"])
    return 0
