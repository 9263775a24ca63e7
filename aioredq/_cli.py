"""The command line: run an app, inspect its keys, manage dead letters.

python -m aioredq MODULE:ATTR [--url URL] [--only NAME ...] [--workers N] [--log-level L]
                             [--log-format text|json] [--metrics-port PORT]
python -m aioredq inspect MODULE:ATTR [--url URL] [--json] [--watch]
python -m aioredq dead MODULE:ATTR NAME [--show N [--full] | --requeue [--all | ID ...]
                                        | --purge [--yes]]
python -m aioredq pause|resume MODULE:ATTR NAME
python -m aioredq cancel MODULE:ATTR QUEUE ID
python -m aioredq acl MODULE:ATTR [--user NAME]
python -m aioredq docs MODULE:ATTR [--yaml] [--out FILE]
python -m aioredq dashboard MODULE:ATTR [--host 127.0.0.1] [--port 8080] [--token T]

Every error a user can cause is one line on stderr, never a traceback (``--log-level DEBUG``
adds it): exit status 2 for what the user must change (a bad MODULE:ATTR or option, a bad URL
value, a password, a key or ACL permission Redis refuses at start, nothing to run), 1 for a
Redis that cannot be reached at start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NoReturn

from ._app import NOTHING_TO_RUN, App
from ._exceptions import AioredqError, ConfigurationError, UsageError
from ._logging import JsonFormatter, LineFormatter
from ._loop import loop_name
from ._loop import run as run_loop
from ._startup import first_error
from ._supervisor import SUPERVISOR_ENV, WORKER_INDEX_ENV, supervise, without_workers

PROG = "aioredq"
SUPERVISOR_CHECK_SECONDS = 1.0
log = logging.getLogger("aioredq")

RUN_EPILOG = """\
metrics:
  --metrics-port PORT serves Prometheus metrics on http://HOST:PORT/metrics (needs
  pip install 'aioredq[prometheus]'). With --workers N, worker i serves its own counters on
  PORT+i (ports PORT to PORT+N-1); the Redis figures (length, lag, ...) are the same on each.

other commands:
  aioredq inspect MODULE:ATTR [--url URL] [--json] [--watch]
  aioredq pause MODULE:ATTR NAME / aioredq resume MODULE:ATTR NAME
  aioredq dead MODULE:ATTR NAME [--show N [--full] | --requeue [--all | ID ...] | --purge [--yes]]
  aioredq pause|resume MODULE:ATTR NAME
  aioredq cancel MODULE:ATTR QUEUE ID
  aioredq acl MODULE:ATTR [--user NAME]
  aioredq docs MODULE:ATTR [--yaml] [--out FILE]
  aioredq dashboard MODULE:ATTR [--host 127.0.0.1] [--port 8080] [--token T]
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the usage and the error on two lines and exits; one line is enough.
        raise UsageError(message)


def _number(kind: type[int] | type[float], minimum: float) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text!r}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}")
    return value


def _add_common(p: _Parser) -> None:
    p.add_argument("app", metavar="MODULE:ATTR", help="the App, e.g. myproject.worker:app")
    p.add_argument("--url", help="Redis URL (overrides the App's and $AIOREDQ_URL)")
    p.add_argument(
        "--connect-timeout",
        type=_number(float, 0),
        default=None,
        metavar="SECONDS",
        help="how long to keep trying to reach Redis at start (default 10)",
    )


def _run_parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        description="Run the handlers of an aioredq App until SIGTERM or SIGINT.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(p)
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these handlers")
    p.add_argument(
        "--workers",
        type=_number(int, 1),
        default=1,
        help="processes to run; one that dies is restarted after a back-off (1 s to 30 s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        type=str.upper,
        help="DEBUG adds tracebacks to handler failures (default INFO)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        type=str.lower,
        help="text lines (default), or one JSON object per line for log shippers",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on this port (worker i of --workers: PORT+i)",
    )
    p.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="HOST",
        help="address the metrics server listens on (default 0.0.0.0)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=_number(float, 0),
        default=None,
        metavar="SECONDS",
        help="how long in-flight handlers may finish after SIGTERM (default 30)",
    )
    return p


def _inspect_parser() -> _Parser:
    p = _Parser(prog=f"{PROG} inspect", description="Show every handler's Redis figures.")
    _add_common(p)
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("--watch", action="store_true", help="refresh in place")
    p.add_argument("--interval", type=_number(float, 0.1), default=2.0, metavar="SECONDS")
    return p


def _dead_parser() -> _Parser:
    p = _Parser(
        prog=f"{PROG} dead", description="List, requeue or purge one handler's dead letters."
    )
    _add_common(p)
    p.add_argument("name", metavar="NAME", help="handler, queue or stream")
    action = p.add_mutually_exclusive_group()
    action.add_argument(
        "--show", type=_number(int, 1), metavar="N", default=None, help="newest N (default 20)"
    )
    action.add_argument(
        "--requeue", nargs="*", metavar="ID", default=None, help="these letters, or --all"
    )
    action.add_argument("--purge", action="store_true", help="delete the handler's letters")
    p.add_argument("--all", action="store_true", help="with --requeue: every dead letter")
    p.add_argument("--full", action="store_true", help="with --show: bodies and errors uncut")
    p.add_argument("--yes", action="store_true", help="with --purge: do not ask for confirmation")
    return p


def load_app(spec: str) -> App:
    """Import ``module:attr`` (``attr`` may be dotted) and check that it is an App."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (e.g. myproject.worker:app), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from None
    except ConfigurationError:
        raise  # a handler declared wrongly: its own message says which and why
    except SyntaxError as exc:
        # The traceback of a syntax error points into importlib; the error itself knows where.
        raise UsageError(
            f"importing {module_name!r} failed at {exc.filename}:{exc.lineno}: "
            f"{type(exc).__name__}: {exc.msg}"
        ) from exc
    except Exception as exc:
        raise UsageError(
            f"importing {module_name!r} failed{_where(exc)}: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise UsageError(f"{spec} is not an aioredq.App (it is of type {type(obj).__name__})")
    return obj


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {last.filename}:{last.lineno}"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``aioredq`` console script and ``python -m aioredq``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _main(args)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        code = _fail(exc, args)
    sys.exit(code)


def _fail(exc: Exception, args: list[str]) -> int:
    """One line on stderr (the traceback above it with ``--log-level DEBUG``); the exit
    status: 2 for what the user must change, 1 for Redis unreachable or anything else."""
    if _debugging(args):
        traceback.print_exception(exc)
    error = first_error(exc)
    prefix = suffix = ""
    if isinstance(error, (UsageError, ConfigurationError)):
        code = 2
    elif isinstance(error, AioredqError):  # ConnectError above all: Redis unreachable
        code = 1
    else:  # a failure nobody foresaw: still one line, its type named
        code = 1
        prefix = f"{type(error).__name__}: "
        if not _debugging(args):
            suffix = " (--log-level DEBUG shows the traceback)"
    print(f"{PROG}: error: {prefix}{' '.join(str(error).split())}{suffix}", file=sys.stderr)
    return code


def _debugging(args: list[str]) -> bool:
    """Whether the command line asks for ``--log-level DEBUG`` (read before parsing, so that
    a failure while parsing or importing can show its traceback too)."""
    for i, arg in enumerate(args):
        if arg.lower() == "--log-level=debug":
            return True
        if arg == "--log-level" and args[i + 1 : i + 2] and args[i + 1].lower() == "debug":
            return True
    return False


def _acl(args: list[str]) -> int:
    """``aioredq acl MODULE:ATTR [--user NAME]``: print the app's least-privilege ACL line."""
    from ._acl import NEWER_SERVERS, acl_line

    p = _Parser(
        prog=f"{PROG} acl",
        description="Print the ACL SETUSER line granting exactly what the app needs "
        "(run, inspect, dead). Add a password (>secret) before running it.",
    )
    p.add_argument("app", metavar="MODULE:ATTR", help="the App, e.g. myproject.worker:app")
    p.add_argument("--url", help="Redis URL (overrides the App's and $AIOREDQ_URL)")
    p.add_argument("--user", default="aioredq", help="the ACL user name (default aioredq)")
    ns = p.parse_args(args)
    app = load_app(ns.app)
    if ns.url:
        app.set_url(ns.url)
    print(acl_line(app, ns.user))
    print(f"# on Redis 7.2 and newer, also grant {NEWER_SERVERS}", file=sys.stderr)
    return 0


def _docs(args: list[str]) -> int:
    """``aioredq docs MODULE:ATTR [--yaml] [--out FILE]``: the app's AsyncAPI document."""
    import json

    from ._asyncapi import asyncapi_document
    from ._yaml import to_yaml

    p = _Parser(
        prog=f"{PROG} docs",
        description="Print the AsyncAPI 3.0.0 document of the app's handlers "
        "(channels, receive operations, payload JSON Schemas).",
    )
    p.add_argument("app", metavar="MODULE:ATTR", help="the App, e.g. myproject.worker:app")
    p.add_argument("--url", help="Redis URL for the servers section (no password is shown)")
    p.add_argument("--yaml", action="store_true", help="YAML instead of JSON")
    p.add_argument("--out", metavar="FILE", help="write the document to FILE")
    p.add_argument("--title", help="the document's title (default: the module name)")
    p.add_argument("--version", help="the document's version (default 0.1.0)")
    ns = p.parse_args(args)
    app = load_app(ns.app)
    if ns.url:
        app.set_url(ns.url)
    title = ns.title or ns.app.partition(":")[0]
    doc = asyncapi_document(app, title=title, version=ns.version)
    text = to_yaml(doc) if ns.yaml else json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if ns.out is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(ns.out, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {ns.out}: {exc.strerror or exc}") from None
    return 0


def _dashboard(args: list[str]) -> int:
    """``aioredq dashboard MODULE:ATTR [--host H] [--port P] [--token T]``: serve the web page."""
    p = _Parser(
        prog=f"{PROG} dashboard",
        description="Serve the dashboard: live figures, charts and dead letters in a browser. "
        "Without --token (or $AIOREDQ_DASHBOARD_TOKEN) it is read-only.",
    )
    _add_common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--token", default=None, help="the token that allows requeue and purge")
    ns = p.parse_args(args)
    try:
        import uvicorn
    except ImportError:
        raise UsageError("the dashboard needs uvicorn: pip install 'aioredq[dashboard]'") from None
    token = ns.token or os.environ.get("AIOREDQ_DASHBOARD_TOKEN") or None
    app = _prepare(ns)
    asyncio.run(_check_reachable(app))
    log_handler = logging.StreamHandler()
    log_handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level="INFO", handlers=[log_handler])
    mode = "changes need the token" if token else "read-only: no token"
    log.info("dashboard of %s on http://%s:%d/ (%s)", app.target.safe_url, ns.host, ns.port, mode)
    uvicorn.run(app.dashboard(token), host=ns.host, port=ns.port, log_level="warning")
    return 0


def _pause(command: str, args: list[str]) -> int:
    """``aioredq pause|resume MODULE:ATTR NAME``: stop or restart one handler on every worker."""
    what = "Stop every worker starting" if command == "pause" else "Let every worker start"
    p = _Parser(
        prog=f"{PROG} {command}",
        description=f"{what} the messages of one handler (in-flight ones finish; the state "
        "lives in Redis, so it outlives restarts).",
    )
    _add_common(p)
    p.add_argument("name", metavar="NAME", help="handler, queue or stream")
    ns = p.parse_args(args)
    app = _prepare(ns)
    app.pause_key(ns.name)  # an unknown name or a pub/sub handler: exit 2 before connecting

    async def switch() -> None:
        try:
            await (app.pause if command == "pause" else app.resume)(ns.name)
        finally:
            await app.aclose()

    asyncio.run(switch())
    print(f"{ns.name}: {'paused' if command == 'pause' else 'resumed'}")
    return 0


def _cancel(args: list[str]) -> int:
    """``aioredq cancel MODULE:ATTR QUEUE ID``: cancel one job (app.cancel); exit 1 if unknown."""
    p = _Parser(
        prog=f"{PROG} cancel",
        description="Cancel a job: a waiting one never runs, a running one is interrupted "
        "within about a second on whichever worker runs it; either way it is dead-lettered "
        "with error Cancelled. Exit status 1 when no waiting or running job has that id.",
    )
    _add_common(p)
    p.add_argument("queue", metavar="QUEUE", help="the task queue")
    p.add_argument("id", metavar="ID", help="the job's id (what enqueue returned)")
    ns = p.parse_args(args)
    app = _prepare(ns)

    async def cancel() -> bool:
        try:
            await app.connect()
            return await app.cancel(ns.queue, ns.id)
        finally:
            await app.aclose()

    if asyncio.run(cancel()):
        print(f"{ns.id}: cancelled")
        return 0
    print(f"{ns.id}: no waiting or running job of {ns.queue!r} has that id", file=sys.stderr)
    return 1


def _inspect(args: list[str]) -> int:
    """``aioredq inspect MODULE:ATTR [--json] [--watch]``: one row per handler."""
    from ._inspect import inspect_command

    ns = _inspect_parser().parse_args(args)
    app = _prepare(ns)
    return asyncio.run(inspect_command(app, as_json=ns.json, watch=ns.watch, interval=ns.interval))


def _dead(args: list[str]) -> int:
    """``aioredq dead MODULE:ATTR NAME [--show N | --requeue ... | --purge]``."""
    from ._inspect import dead_command

    ns = _dead_parser().parse_args(args)
    if ns.all and ns.requeue is None:
        raise UsageError("--all goes with --requeue")
    if ns.requeue is not None and not ns.requeue and not ns.all:
        raise UsageError("--requeue needs --all or dead letter IDs")
    if ns.full and (ns.requeue is not None or ns.purge):
        raise UsageError("--full goes with --show")
    if ns.yes and not ns.purge:
        raise UsageError("--yes goes with --purge")
    app = _prepare(ns)
    return asyncio.run(
        dead_command(
            app,
            ns.name,
            show=ns.show,
            requeue=ns.requeue,
            requeue_all=ns.all,
            purge=ns.purge,
            full=ns.full,
            yes=ns.yes,
        )
    )


def _run(args: list[str]) -> int:
    """``aioredq MODULE:ATTR [...]``: run the app's consumers (or supervise --workers N)."""
    ns = _run_parser().parse_args(args)
    app = _prepare(ns)
    # Unknown names, or nothing at all to run, fail here, before anything starts.
    if not app._select(ns.only):
        raise UsageError(f"{ns.app} has no handlers: nothing to run ({NOTHING_TO_RUN})")
    if ns.shutdown_timeout is not None:
        app.shutdown_timeout = ns.shutdown_timeout
    supervisor = _supervisor_pid()
    metrics = None
    if ns.metrics_port is not None:
        from ._metrics import require_prometheus

        require_prometheus()  # before anything starts: one line, exit 2
        metrics = (ns.metrics_host, ns.metrics_port + _worker_index())
    if ns.workers > 1 and supervisor is None:
        if ns.metrics_port is not None:
            _check_ports(ns.metrics_host, range(ns.metrics_port, ns.metrics_port + ns.workers))
        asyncio.run(_check_reachable(app))  # one error line, not one per worker
    handler = logging.StreamHandler()  # one record, one line: foreign text escaped
    if ns.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=ns.log_level, handlers=[handler])
    if ns.workers > 1 and supervisor is None:
        return supervise(without_workers(args), ns.workers)
    # redis-py logs a line per connection at DEBUG: noise next to aioredq's own DEBUG lines.
    logging.getLogger("redis").setLevel(max(logging.getLogger().level, logging.INFO))
    run_loop(_serve(app, ns.only, supervisor, metrics))
    return 0


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "inspect": _inspect,
    "dead": _dead,
    "pause": partial(_pause, "pause"),
    "resume": partial(_pause, "resume"),
    "cancel": _cancel,
    "acl": _acl,
    "docs": _docs,
    "dashboard": _dashboard,
}


def _main(args: list[str]) -> int:
    command = SUBCOMMANDS.get(args[0]) if args else None
    return command(args[1:]) if command is not None else _run(args)


def _prepare(ns: argparse.Namespace) -> App:
    app = load_app(ns.app)
    if ns.url:
        app.set_url(ns.url)
    if ns.connect_timeout is not None:
        app.connect_timeout = ns.connect_timeout
    return app


async def _check_reachable(app: App) -> None:
    try:
        await app.connect()
    finally:
        await app.aclose()


async def _serve(
    app: App, only: list[str] | None, supervisor: int | None, metrics: tuple[str, int] | None
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        try:
            # Reach Redis before saying anything, so an unreachable one is a single error line.
            await app.connect()
            if metrics is not None:
                from ._metrics import serve_metrics

                host, port = metrics
                await stack.enter_async_context(serve_metrics(app, port, host))
        except BaseException:
            await app.aclose()
            raise
        names = ", ".join(h.name for h in app._select(only))
        log.info(
            "starting %s handlers: %s (pid %d, %s)",
            app.target.safe_url,
            names,
            os.getpid(),
            loop_name(),
        )
        if supervisor is None:
            await app.run(only=only)
            return
        watch = asyncio.ensure_future(_watch_supervisor(supervisor))
        try:
            await app.run(only=only)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


def _worker_index() -> int:
    value = os.environ.get(WORKER_INDEX_ENV, "") if _supervisor_pid() is not None else ""
    return int(value) if value.isdigit() else 0


def _check_ports(host: str, ports: range) -> None:
    """Refuse at once a metrics port that is taken, rather than in one worker of N."""
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise UsageError(
                    f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
                ) from None


async def _watch_supervisor(supervisor: int) -> None:
    """A worker of ``--workers N`` stops gracefully when its supervisor is gone (killed
    without a chance to forward a signal), instead of running on as an orphan."""
    while True:
        await asyncio.sleep(SUPERVISOR_CHECK_SECONDS)
        if os.getppid() != supervisor:
            break
    log.warning("supervisor %d is gone: stopping", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def _supervisor_pid() -> int | None:
    value = os.environ.get(SUPERVISOR_ENV, "")
    return int(value) if value.isdigit() else None
