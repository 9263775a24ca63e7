"""The command line: run an app, inspect its keys, manage dead letters.

python -m aioredq MODULE:ATTR [--url URL] [--only NAME ...] [--workers N] [--log-level L]
python -m aioredq inspect MODULE:ATTR [--url URL] [--json] [--watch]
python -m aioredq dead MODULE:ATTR NAME [--show N | --requeue [--all | ID ...] | --purge]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ._app import App
from ._exceptions import AioredqError, ConfigurationError, ConnectError

PROG = "aioredq"


class UsageError(Exception):
    """Bad command-line input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
        return value

    return parse


def _run_parser() -> _Parser:
    p = _Parser(prog=PROG, description="Run the handlers of an aioredq App.")
    p.add_argument("app", metavar="MODULE:ATTR", help="the App to run, e.g. myproject.app:app")
    p.add_argument("--url", help="Redis URL (overrides the App's and $AIOREDQ_URL)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these handlers")
    p.add_argument("--workers", type=_positive(int), default=1, help="processes to run")
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        type=str.upper,
    )
    p.add_argument(
        "--shutdown-timeout",
        type=_positive(float),
        default=None,
        help="seconds in-flight handlers get to finish on SIGTERM (default 30)",
    )
    p.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=None,
        help="seconds to keep trying to reach Redis at start (default 10)",
    )
    return p


def _inspect_parser() -> _Parser:
    p = _Parser(prog=f"{PROG} inspect", description="Show every handler's Redis figures.")
    p.add_argument("app", metavar="MODULE:ATTR")
    p.add_argument("--url")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("--watch", action="store_true", help="refresh in place")
    p.add_argument("--interval", type=_positive(float), default=2.0)
    return p


def _dead_parser() -> _Parser:
    p = _Parser(prog=f"{PROG} dead", description="List, requeue or purge dead letters.")
    p.add_argument("app", metavar="MODULE:ATTR")
    p.add_argument("name", metavar="NAME", help="handler, queue or stream")
    p.add_argument("--url")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--show", type=_positive(int), metavar="N", default=None)
    action.add_argument("--requeue", nargs="*", metavar="ID", default=None)
    action.add_argument("--purge", action="store_true")
    p.add_argument("--all", action="store_true", help="with --requeue: every dead letter")
    return p


def load_app(spec: str) -> App:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (e.g. myproject.worker:app), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not an aioredq.App")
    return obj


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _main(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = 2
    except ConfigurationError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = 2
    except ConnectError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = 1
    except AioredqError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _main(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        _run_parser().print_help()
        return 0
    if args and args[0] == "inspect":
        from ._inspect import inspect_command

        ns = _inspect_parser().parse_args(args[1:])
        app = _prepare(ns.app, ns.url)
        return asyncio.run(
            inspect_command(app, as_json=ns.json, watch=ns.watch, interval=ns.interval)
        )
    if args and args[0] == "dead":
        from ._inspect import dead_command

        ns = _dead_parser().parse_args(args[1:])
        if ns.all and ns.requeue is None:
            raise UsageError("--all goes with --requeue")
        if ns.requeue is not None and not ns.requeue and not ns.all:
            raise UsageError("--requeue needs --all or dead letter IDs")
        app = _prepare(ns.app, ns.url)
        return asyncio.run(
            dead_command(
                app, ns.name, show=ns.show, requeue=ns.requeue, requeue_all=ns.all, purge=ns.purge
            )
        )
    ns = _run_parser().parse_args(args)
    if ns.workers < 1:
        raise UsageError("--workers must be >= 1")
    app = _prepare(ns.app, ns.url)
    if ns.only:
        app._select(ns.only)  # validate names before starting anything
    if ns.workers > 1:
        return _supervise(args, ns.workers)
    logging.basicConfig(
        level=ns.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if ns.shutdown_timeout is not None:
        app.shutdown_timeout = ns.shutdown_timeout
    if ns.connect_timeout is not None:
        app.connect_timeout = ns.connect_timeout
    logging.getLogger("aioredq").info("starting %r", app)
    asyncio.run(app.run(only=ns.only))
    return 0


def _prepare(spec: str, url: str | None) -> App:
    app = load_app(spec)
    if url:
        app.set_url(url)
    return app


def _supervise(args: list[str], workers: int) -> int:
    """Run ``workers`` processes of this app; forward SIGINT/SIGTERM; exit when all have."""
    child_args = _without_workers(args)
    procs = [
        subprocess.Popen([sys.executable, "-m", "aioredq", *child_args]) for _ in range(workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [proc.wait() for proc in procs]
    return next((c for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)), 0)


def _without_workers(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out
