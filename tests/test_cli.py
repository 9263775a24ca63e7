"""The command line as users run it: real subprocesses, real signals, a real Redis server.

The app under test is ``tests/apps/cli_app.py``; its handlers write one JSON line per message to
``$CLI_APP_OUT``. Every subprocess gets ``$AIOREDQ_URL`` pointing at a closed port, so a command
that should fail before reaching Redis can never reach a server the suite did not start.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.cli_app:app"
QUEUE, STREAM, GROUP, CHANNEL = "cli-jobs", "cli-events", "cli-group", "cli-notice"
WAIT = 20.0
STOP_WITHIN = 10.0  # "exits within a few seconds": a generous bound, not a measurement
SCRIPT = Path(sys.executable).parent / "aioredq"
MODULE = [sys.executable, "-m", "aioredq"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


CLOSED_URL = f"redis://127.0.0.1:{closed_port()}/0"


def cli_env(out: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOREDQ_", "CLI_APP_"))}
    env["AIOREDQ_URL"] = CLOSED_URL
    if out is not None:
        env["CLI_APP_OUT"] = str(out)
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, script: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [str(SCRIPT)] if script else [sys.executable, "-m", "aioredq"]
    return subprocess.run(
        [*argv, *args],
        cwd=ROOT,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def eventually(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return value


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing command prints on stderr."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{done.stderr}"
    assert lines[0].startswith("aioredq: error: "), lines[0]
    assert "Traceback" not in done.stderr
    return lines[0]


class Worker:
    """``python -m aioredq ...`` running in the background, its stderr kept in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, session: bool) -> None:
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [*MODULE, *args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=session,  # its own process group, as a shell job has
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait (bounded) for the exit; returns the exit status."""
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"not stopped {STOP_WITHIN:.0f} s after {signum!r}:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "handled.jsonl"


@pytest.fixture
def start_worker(tmp_path: Path, out: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(*args: str, env: dict[str, str] | None = None, session: bool = False) -> Worker:
        log = tmp_path / f"worker{len(workers)}.log"
        worker = Worker(list(args), env or cli_env(out), log, session)
        workers.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in workers:  # a failed test must not leave a worker running
            for child in children_of(worker.pid):
                os.kill(child, signal.SIGKILL)
            worker.kill()


def handled(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines()]


def in_flight(r: redis.Redis) -> int:
    return sum(int(r.llen(key)) for key in r.scan_iter(match=f"{{{QUEUE}}}:processing:*"))


def subscribers(r: redis.Redis) -> int:
    return int(dict(r.pubsub_numsub(CHANNEL))[CHANNEL])


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# running -------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_handles_foreign_messages_then_stops_cleanly(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker], signum: int
) -> None:
    worker = start_worker(APP, "--url", redis_url)
    eventually(lambda: subscribers(r) == 1, "the worker to subscribe")
    r.lpush(QUEUE, "email:123")
    r.xadd(STREAM, {"type": "email", "user": "42"})
    assert r.publish(CHANNEL, "hi") == 1
    eventually(lambda: len(handled(out)) == 3, "3 handled messages")
    assert worker.stop(signum) == 0, worker.output()  # fails if not stopped within the bound
    by_handler = {h["handler"]: h["body"] for h in handled(out)}
    assert by_handler == {
        "job": "email:123",
        "event": {"type": "email", "user": "42"},
        "notice": "hi",
    }
    assert in_flight(r) == 0
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    assert subscribers(r) == 0
    assert "Traceback" not in worker.output()


def test_stop_finishes_in_flight_work_and_hands_back_the_rest(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    worker = start_worker(APP, "--url", redis_url)
    eventually(lambda: subscribers(r) == 1, "the worker to subscribe")
    r.lpush(QUEUE, *["slow:2"] * 6)
    # concurrency 2 + 2 x batch 1: two running, two fetched and waiting, two still queued
    eventually(lambda: in_flight(r) == 4 and r.llen(QUEUE) == 2, "4 items taken")
    assert worker.stop() == 0, worker.output()
    finished = len(handled(out))
    assert finished == 2  # the running handlers were allowed to finish
    assert in_flight(r) == 0
    assert r.llen(QUEUE) == 6 - finished  # the fetched-but-unstarted item went back


def test_a_second_signal_exits_at_once_and_the_work_stays_recoverable(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    worker = start_worker(APP, "--url", redis_url)
    eventually(lambda: subscribers(r) == 1, "the worker to subscribe")
    r.lpush(QUEUE, "slow:60")
    eventually(lambda: in_flight(r) == 1, "the slow job to start")
    worker.proc.send_signal(signal.SIGTERM)
    eventually(lambda: "received SIGTERM" in worker.output(), "the first signal to be seen")
    worker.stop(signal.SIGTERM)
    assert handled(out) == []
    # Not lost: still in the consumer's processing list, for the lease to recover.
    assert in_flight(r) + r.llen(QUEUE) == 1


def test_url_option_beats_the_apps_url_and_the_environment(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    # `pinned` is App("redis://127.0.0.1:1/0") and $AIOREDQ_URL points at a closed port too.
    worker = start_worker("tests.apps.cli_app:pinned", "--url", redis_url)
    r.lpush(QUEUE, "via --url")
    eventually(lambda: handled(out), "the job")
    assert worker.stop() == 0, worker.output()
    assert [(h["handler"], h["body"]) for h in handled(out)] == [("pinned_job", "via --url")]


def test_the_environment_url_is_used_without_url_option(redis_url: str, r: redis.Redis) -> None:
    r.lpush(QUEUE, "a", "b")
    done = run_cli("inspect", APP, "--json", env=cli_env(AIOREDQ_URL=redis_url))
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)["handlers"]}
    assert rows["job"]["length"] == 2


def test_only_runs_just_the_named_handler(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    worker = start_worker(APP, "--url", redis_url, "--only", "job")
    r.xadd(STREAM, {"type": "email"})
    r.publish(CHANNEL, "nobody listens")
    r.lpush(QUEUE, "only me")
    eventually(lambda: handled(out), "the job")
    time.sleep(0.5)  # long enough for the other handlers to show up, were they running
    assert worker.stop() == 0, worker.output()
    assert [h["handler"] for h in handled(out)] == ["job"]
    assert r.xinfo_groups(STREAM) == []  # the stream handler never started: no group
    assert subscribers(r) == 0
    [starting] = [line for line in worker.output().splitlines() if " starting " in line]
    assert f"starting {redis_url} handlers: job (pid {worker.pid}, " in starting


def test_only_with_an_unknown_name_is_a_usage_error(redis_url: str) -> None:
    done = run_cli(APP, "--url", redis_url, "--only", "job", "nope")
    assert done.returncode == 2
    line = one_error_line(done)
    assert "'nope'" in line and "job, event, notice" in line


@pytest.mark.parametrize(
    "level",
    ["WARNING", "DEBUG"],
)
def test_log_level_and_one_structured_line_per_failure(
    redis_url: str, r: redis.Redis, start_worker: Callable[..., Worker], level: str
) -> None:
    worker = start_worker(APP, "--url", redis_url, "--log-level", level.lower())
    eventually(lambda: subscribers(r) == 1, "the worker to subscribe")
    r.lpush(QUEUE, "slow:not-a-number")  # the handler raises ValueError
    line = eventually(
        lambda: next((x for x in worker.output().splitlines() if "failed:" in x), None),
        "the failure to be logged",
    )
    # The failure is logged before the retry is written: wait for the write.
    [retry] = eventually(lambda: r.zrange(f"{{{QUEUE}}}:delayed", 0, -1), "the retry")
    message_id = json.loads(retry)["id"]
    assert worker.stop() == 0, worker.output()
    assert " WARNING aioredq: " in line
    assert (
        f"handler=job key={QUEUE} id={message_id} attempt=1/5 failed: ValueError: could not "
        "convert string to float: 'not-a-number'; retrying in " in line
    )
    output = worker.output()
    if level == "WARNING":
        assert " INFO " not in output and "Traceback" not in output
    else:  # DEBUG: info lines, and the handler's traceback under the failure line
        assert " INFO aioredq: starting " in output and "Traceback" in output
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        assert f", {loop})" in output  # the event loop it runs on


# --workers -------------------------------------------------------------------------------------
def two_workers(
    start_worker: Callable[..., Worker], redis_url: str, r: redis.Redis
) -> tuple[Worker, list[int]]:
    """A supervisor of 2 workers, both subscribed; and the workers' pids."""
    supervisor = start_worker(APP, "--url", redis_url, "--workers", "2")
    eventually(lambda: subscribers(r) == 2, "2 workers to subscribe")
    workers = children_of(supervisor.pid)
    assert len(workers) == 2
    return supervisor, workers


def test_workers_share_the_work_and_stop_on_one_sigterm(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    supervisor, workers = two_workers(start_worker, redis_url, r)
    r.lpush(QUEUE, *[f"slow:0.{i % 3}" for i in range(24)])
    r.xadd(STREAM, {"n": "1"})
    eventually(lambda: len(handled(out)) == 25, "25 handled messages")
    jobs_by = {h["pid"] for h in handled(out) if h["handler"] == "job"}
    assert jobs_by == set(workers)  # both processes took part
    assert supervisor.stop() == 0, supervisor.output()
    assert not [pid for pid in workers if alive(pid)]
    assert in_flight(r) == 0
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    assert supervisor.output().count("received SIGTERM") == 2  # each worker saw one signal


def test_ctrl_c_reaches_each_worker_once_so_they_stop_gracefully(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    supervisor = start_worker(APP, "--url", redis_url, "--workers", "2", session=True)
    eventually(lambda: subscribers(r) == 2, "2 workers to subscribe")
    r.lpush(QUEUE, *["slow:2"] * 4)
    eventually(lambda: r.llen(QUEUE) == 0 and in_flight(r) == 4, "4 jobs taken")
    # A terminal's Ctrl-C signals the whole foreground process group at once.
    os.killpg(supervisor.pid, signal.SIGINT)
    try:
        code = supervisor.proc.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"not stopped after Ctrl-C:\n{supervisor.output()}")
    assert code == 0, supervisor.output()
    assert supervisor.output().count("received SIGINT") == 2
    finished = len(handled(out))
    assert finished >= 3  # every running job finished; at most one unstarted went back
    assert finished + r.llen(QUEUE) == 4 and in_flight(r) == 0


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(
    redis_url: str, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    supervisor = start_worker(APP, "--url", redis_url, "--workers", "2")
    eventually(lambda: subscribers(r) == 2, "2 workers to subscribe")
    workers = children_of(supervisor.pid)
    supervisor.kill()  # SIGKILL: no chance to forward anything
    eventually(lambda: not any(alive(pid) for pid in workers), "the orphaned workers to stop")
    assert subscribers(r) == 0
    assert "supervisor" in supervisor.output() and "gone" in supervisor.output()


def test_workers_restart_a_worker_that_died_after_a_growing_back_off(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    supervisor, first = two_workers(start_worker, redis_url, r)
    os.kill(first[0], signal.SIGKILL)
    restarted = eventually(
        lambda: [pid for pid in children_of(supervisor.pid) if pid not in first],
        "a new worker in place of the killed one",
    )
    [replacement] = restarted
    output = supervisor.output()
    assert f"(pid {first[0]}) was killed by SIGKILL after " in output
    assert "; restarting it in 1 s" in output and f"restarted (pid {replacement})" in output
    r.lpush(QUEUE, *[f"job-{i}" for i in range(6)])
    eventually(lambda: len(handled(out)) == 6, "6 handled messages after the restart")
    eventually(lambda: subscribers(r) == 2, "2 subscribed workers again")

    # Dead again soon after its start: the next restart waits twice as long.
    os.kill(replacement, signal.SIGKILL)
    eventually(lambda: "restarting it in 2 s" in supervisor.output(), "the doubled back-off")
    # A stop during the back-off stops the others and starts nothing new.
    assert supervisor.stop() == 0, supervisor.output()
    assert not [pid for pid in [*first, replacement] if alive(pid)]
    assert children_of(supervisor.pid) == []
    assert supervisor.output().count("restarted (pid") == 1
    assert in_flight(r) == 0 and subscribers(r) == 0


def test_workers_that_exit_2_are_not_restarted_and_the_supervisor_exits_2(
    redis_url: str, r: redis.Redis
) -> None:
    r.set(STREAM, "not a stream")  # every worker refuses to start: a configuration error
    done = run_cli(APP, "--url", redis_url, "--workers", "2")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("aioredq: error: ")]
    assert errors and all(f"the key '{STREAM}' is not a stream" in line for line in errors)
    assert "exited with status 2 (see its error above): restarting cannot fix that" in done.stderr
    assert "restarting it in" not in done.stderr and "restarted (pid" not in done.stderr


# mistakes: one line, the right exit status, no traceback -----------------------------------------
BAD_APPS = [
    ("tests.apps.cli_app", "expected MODULE:ATTR"),
    (":app", "expected MODULE:ATTR"),
    ("tests.apps.cli_app:", "expected MODULE:ATTR"),
    ("tests.apps.missing:app", "cannot import module 'tests.apps.missing'"),
    ("tests.apps.cli_app:nope", "has no attribute 'nope'"),
    ("tests.apps.cli_app:not_an_app", "not an aioredq.App"),
    ("tests.apps.cli_broken:app", "RuntimeError: this module is broken on purpose"),
    ("tests.apps.cli_bad_handler:app", "'not_async' must be an `async def` function"),
    ("tests.apps.cli_bare:app", '@app.task needs the queue name in parentheses: write @app.task("'),
    ("tests.apps.cli_empty:app", "tests.apps.cli_empty:app has no handlers: nothing to run"),
]


def run_many(cases: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent CLI invocations a few at a time (each is mostly interpreter start-up)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: run_cli(*args), cases))


def test_a_bad_module_attr_is_one_line_and_exit_2() -> None:
    cases = [([spec], message) for spec, message in BAD_APPS]
    for spec, message in (BAD_APPS[0], BAD_APPS[4]):  # inspect and dead load it the same way
        cases += [(["inspect", spec], message), (["dead", spec, "job"], message)]
    results = run_many([args for args, _ in cases])
    for (args, message), done in zip(cases, results, strict=True):
        assert done.returncode == 2, (args, done.stderr)
        assert message in one_error_line(done), args
        assert done.stdout == "", args


BAD_OPTIONS = [
    [APP, "--workers", "x"],
    [APP, "--workers", "0"],
    [APP, "--bogus"],
    [APP, "--log-level", "LOUD"],
    [APP, "--shutdown-timeout", "-1"],
    [APP, "--connect-timeout", "soon"],
    [APP, "--only"],
    [APP, "extra-positional"],
    [],
    ["inspect"],
    ["inspect", APP, "--bogus"],
    ["inspect", APP, "--interval", "0"],
    ["dead", APP],
    ["dead", APP, "job", "--show", "0"],
    ["dead", APP, "job", "--requeue"],
    ["dead", APP, "job", "--all"],
    ["dead", APP, "job", "--show", "1", "--purge"],
]


def test_a_bad_option_is_one_line_and_exit_2() -> None:
    for args, done in zip(BAD_OPTIONS, run_many(BAD_OPTIONS), strict=True):
        assert done.returncode == 2, (args, done.stderr)
        one_error_line(done)
        assert done.stdout == "", args


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
@pytest.mark.parametrize(
    "command",
    [[APP], [APP, "--workers", "2"], ["inspect", APP], ["dead", APP, "job"]],
    ids=["run", "workers", "inspect", "dead"],
)
def test_unreachable_redis_is_one_line_without_the_password_and_exit_1(
    command: list[str], scheme: str
) -> None:
    port = closed_port()
    url = f"{scheme}://user:secret@127.0.0.1:{port}/0"
    done = run_cli(*command, "--url", url, "--connect-timeout", "1")
    assert done.returncode == 1, done.stderr
    line = one_error_line(done)
    assert f"cannot reach Redis at {scheme}://user:***@127.0.0.1:{port}/0" in line
    assert "secret" not in done.stderr + done.stdout


def failure_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a command that failed at start, after its log lines."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    errors = [line for line in lines if line.startswith("aioredq: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    return errors[0]


def test_start_up_refusals_are_one_line_naming_what_to_fix_and_exit_2(
    redis_server_factory: Any,
) -> None:
    server = redis_server_factory()
    host = f"127.0.0.1:{server.port}"
    with redis.Redis.from_url(server.url) as admin:
        admin.set(STREAM, "not a stream")  # db 0; the ACL users below work in db 1
        every = ["~*", "&*", "+@all"]
        for user, rules in {
            "nogroup": [*every, "-xgroup"],
            "nochan": ["~*", "resetchannels", "+@all"],
            "nokeys": [f"~{QUEUE}", f"~{{{QUEUE}}}:*", "&*", "+@all"],
            "noping": [*every, "-ping"],
            "noscript": [*every, "-evalsha"],
        }.items():
            admin.execute_command("ACL", "SETUSER", user, "on", ">pw", *rules)
        admin.config_set("requirepass", "sekret")
    cases = {
        f"redis://{host}/0": ["needs a password: add it to the URL"],
        f"redis://:not-this-one@{host}/0": [
            "refused the user name or password",
            "fix the password in the URL",
        ],
        f"redis://:sekret@{host}/0": [
            f"handler 'event' (stream '{STREAM}', group '{GROUP}') cannot start: ",
            "WRONGTYPE",
            f"the key '{STREAM}' is not a stream: delete or rename that key",
        ],
        f"redis://nogroup:pw@{host}/1": [
            f"handler 'event' (stream '{STREAM}', group '{GROUP}') cannot start: ",
            "ACL SETUSER nogroup +xgroup|create",
        ],
        f"redis://nochan:pw@{host}/1": [
            f"handler 'notice' (channels '{CHANNEL}')",
            f"ACL SETUSER nochan &{CHANNEL}",
        ],
        f"redis://nokeys:pw@{host}/1": [
            "handler 'event'",
            f"ACL SETUSER nokeys ~{STREAM} ~{{{STREAM}}}:*",
        ],
        f"redis://noping:pw@{host}/1": ["refused the first command", "ACL SETUSER noping +ping"],
        f"redis://noscript:pw@{host}/1": [
            f"handler 'job' (queue '{QUEUE}') cannot start: ",
            "ACL SETUSER noscript +evalsha",
        ],
    }
    commands = [[APP, "--url", url, "--connect-timeout", "1"] for url in cases]
    debug = [APP, "--url", f"redis://:sekret@{host}/0", "--log-level", "DEBUG"]
    *results, debugged = run_many([*commands, debug])
    for (url, expected), done in zip(cases.items(), results, strict=True):
        assert done.returncode == 2, (url, done.stderr)
        line = failure_line(done)
        for text in expected:
            assert text in line, (url, line)
        assert "not-this-one" not in done.stderr and "sekret" not in done.stderr
    # --log-level DEBUG adds the traceback above the same line.
    assert debugged.returncode == 2
    assert "Traceback" in debugged.stderr
    assert debugged.stderr.splitlines()[-1] == failure_line(results[2])


def test_a_bad_url_value_is_one_line_and_exit_2() -> None:
    cases = [
        ([APP, "--url", "redis://127.0.0.1:abc/0"], "abc"),
        ([APP, "--url", "nosuch://127.0.0.1:6390/0"], "nosuch://"),
        (["inspect", APP, "--url", "redis://127.0.0.1:abc/0"], "abc"),
    ]
    for (args, text), done in zip(cases, run_many([args for args, _ in cases]), strict=True):
        assert done.returncode == 2, (args, done.stderr)
        assert text in one_error_line(done), args


def test_a_syntax_error_in_the_app_module_names_its_file_and_line(tmp_path: Path) -> None:
    module = tmp_path / "typo_app.py"
    module.write_text("from aioredq import App\n\napp = App(]\n")
    done = run_cli("typo_app:app", env=cli_env(PYTHONPATH=str(tmp_path)))
    assert done.returncode == 2
    line = one_error_line(done)
    assert f"importing 'typo_app' failed at {module}:3: SyntaxError: " in line, line
    assert "importlib" not in line


def test_nothing_to_run_is_one_line_and_exit_2() -> None:
    spec = "tests.apps.cli_empty:app"
    for done in run_many([[spec], [spec, "--workers", "2"]]):
        assert done.returncode == 2, done.stderr
        assert f"{spec} has no handlers: nothing to run" in one_error_line(done)


def test_help_exits_0() -> None:
    for args in (["--help"], ["inspect", "--help"], ["dead", "-h"]):
        done = run_cli(*args)
        assert done.returncode == 0 and "usage: aioredq" in done.stdout, done.stderr


def test_the_console_script_behaves_like_python_m(redis_url: str, r: redis.Redis) -> None:
    assert SCRIPT.exists(), "the package installs an `aioredq` console script"
    r.lpush(QUEUE, "x")
    cases = [
        ["--help"],
        ["tests.apps.cli_app:nope"],
        [APP, "--bogus"],
        ["inspect", APP, "--url", redis_url, "--json"],
        ["dead", APP, "job", "--url", redis_url],
    ]
    for args in cases:
        module, script = run_cli(*args), run_cli(*args, script=True)
        assert (script.returncode, script.stdout, script.stderr) == (
            module.returncode,
            module.stdout,
            module.stderr,
        ), args


# inspect -----------------------------------------------------------------------------------------
def redis_cli(url: str, *args: str) -> list[str]:
    binary = shutil.which("redis-cli")
    if binary is None:
        pytest.skip("redis-cli is not on PATH")
    done = subprocess.run(
        [binary, "-u", url, *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.splitlines()


def xinfo_group(url: str) -> dict[str, str]:
    lines = redis_cli(url, "XINFO", "GROUPS", STREAM)
    return dict(zip(lines[::2], lines[1::2], strict=True))


def snapshot(redis_url: str) -> dict[bytes, bytes | None]:
    with redis.Redis.from_url(redis_url) as client:
        return {key: client.dump(key) for key in sorted(client.keys("*"))}


def inspect_json(redis_url: str) -> dict[str, dict[str, Any]]:
    done = run_cli("inspect", APP, "--url", redis_url, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert list(document) == ["handlers"]
    return {row["name"]: row for row in document["handlers"]}


ROW_KEYS = {
    "name",
    "kind",
    "key",
    "length",
    "lag",
    "pending",
    "processing",
    "delayed",
    "dead",
    "consumers",
    "oldest_pending_s",
    "subscribers",
    "paused",
    "schedule",
}
TASK_EXTRA_KEYS = {"running", "results"}  # task rows also show held jobs and results kept


def test_inspect_json_reports_what_redis_cli_sees_and_changes_nothing(
    redis_url: str, r: redis.Redis
) -> None:
    # Queue: 3 waiting, 2 delayed, 1 dead letter written by another program.
    r.lpush(QUEUE, "a", "b", "c")
    r.zadd(f"{{{QUEUE}}}:delayed", {"later-1": time.time() * 1000 + 3.6e6, "later-2": 1e15})
    r.lpush(f"{{{QUEUE}}}:dead", json.dumps({"id": "x", "error": "from elsewhere"}))
    # Stream: 5 entries, a foreign consumer read 2 of them (pending) and 3 are not delivered.
    for i in range(5):
        r.xadd(STREAM, {"n": str(i)})
    r.xgroup_create(STREAM, GROUP, "0")
    r.xreadgroup(GROUP, "foreign-consumer", {STREAM: ">"}, count=2)
    r.xadd(f"{{{STREAM}}}:dead", {"original_id": "1-1", "error": "from elsewhere"})
    r.xadd(f"{{{STREAM}}}:dead", {"original_id": "1-2", "error": "from elsewhere"})
    pubsub = r.pubsub()
    pubsub.subscribe(CHANNEL)
    try:
        eventually(lambda: subscribers(r) == 1, "the foreign subscriber")
        before = snapshot(redis_url)
        rows = inspect_json(redis_url)
        table = run_cli("inspect", APP, "--url", redis_url)
        assert snapshot(redis_url) == before  # inspect never changes anything
    finally:
        pubsub.close()
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 4, table.stderr
    assert [row["name"] for row in rows.values()] == ["job", "event", "notice"]
    for row in rows.values():
        assert set(row) == ROW_KEYS | (TASK_EXTRA_KEYS if row["kind"] == "task" else set())

    job, event, notice = rows["job"], rows["event"], rows["notice"]
    assert (job["kind"], job["key"]) == ("task", QUEUE)
    assert job["length"] == int(redis_cli(redis_url, "LLEN", QUEUE)[0]) == 3
    assert job["delayed"] == int(redis_cli(redis_url, "ZCARD", f"{{{QUEUE}}}:delayed")[0]) == 2
    assert job["dead"] == int(redis_cli(redis_url, "LLEN", f"{{{QUEUE}}}:dead")[0]) == 1
    assert job["processing"] == 0
    assert job["consumers"] == {"alive": 0, "dead": 0}
    assert (job["lag"], job["pending"], job["oldest_pending_s"], job["subscribers"]) == (None,) * 4
    assert job["paused"] is False
    assert (job["running"], job["results"]) == ([], 0)

    group = xinfo_group(redis_url)
    assert (event["kind"], event["key"]) == ("stream", STREAM)
    assert event["length"] == int(redis_cli(redis_url, "XLEN", STREAM)[0]) == 5
    assert event["pending"] == int(group["pending"]) == 2
    assert event["lag"] == int(group["lag"]) == 3
    assert event["dead"] == int(redis_cli(redis_url, "XLEN", f"{{{STREAM}}}:dead")[0]) == 2
    assert event["consumers"] == {"alive": 0, "dead": 1}  # no heartbeat: not an aioredq worker
    assert event["oldest_pending_s"] is not None and event["oldest_pending_s"] >= 0
    assert (event["processing"], event["delayed"], event["subscribers"]) == (None,) * 3

    assert (notice["kind"], notice["key"]) == ("subscribe", CHANNEL)
    assert notice["subscribers"] == 1
    assert {k: v for k, v in notice.items() if k not in ("name", "kind", "key", "subscribers")} == {
        k: None for k in ROW_KEYS - {"name", "kind", "key", "subscribers"}
    }


def test_inspect_on_an_empty_database_creates_nothing(redis_url: str, r: redis.Redis) -> None:
    rows = inspect_json(redis_url)
    assert r.dbsize() == 0
    assert rows["job"]["length"] == 0 and rows["event"]["length"] == 0
    assert rows["event"]["pending"] is None  # no group yet
    assert rows["notice"]["subscribers"] == 0


def test_inspect_sees_a_running_worker(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    worker = start_worker(APP, "--url", redis_url, "--shutdown-timeout", "0.5")
    eventually(lambda: subscribers(r) == 1, "the worker to subscribe")
    r.lpush(QUEUE, *["slow:60"] * 6)
    for _ in range(6):
        r.xadd(STREAM, {"sleep": "60"})
    # concurrency 2 + 2 x batch 1: each handler holds 4 messages, the rest wait.
    eventually(lambda: in_flight(r) == 4, "4 jobs taken")
    eventually(lambda: r.xpending(STREAM, GROUP)["pending"] == 4, "4 entries delivered")
    rows = inspect_json(redis_url)
    [processing_key] = list(r.scan_iter(match=f"{{{QUEUE}}}:processing:*"))
    job, event, notice = rows["job"], rows["event"], rows["notice"]
    assert job["processing"] == int(redis_cli(redis_url, "LLEN", processing_key)[0]) == 4
    assert job["length"] == int(redis_cli(redis_url, "LLEN", QUEUE)[0]) == 2
    assert job["consumers"] == {"alive": 1, "dead": 0}
    group = xinfo_group(redis_url)
    assert event["pending"] == int(group["pending"]) == 4
    assert event["lag"] == int(group["lag"]) == 2
    assert event["consumers"] == {"alive": 1, "dead": 0}
    assert notice["subscribers"] == 1
    # The slow handlers are interrupted after --shutdown-timeout; their work is handed back.
    assert worker.stop() == 0, worker.output()
    assert in_flight(r) == 0 and r.llen(QUEUE) == 6
    assert handled(out) == []


def test_inspect_watch_refreshes_until_interrupted(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "watch.out"
    with log.open("w") as stdout:
        proc = subprocess.Popen(
            [*MODULE, "inspect", APP, "--url", redis_url, "--json", "--watch", "--interval", "0.1"],
            cwd=ROOT,
            env=cli_env(),
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
        try:
            eventually(lambda: len(log.read_text().splitlines()) >= 3, "3 refreshes")
            proc.send_signal(signal.SIGINT)
            proc.wait(STOP_WITHIN)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
    assert "Traceback" not in stderr
    for line in log.read_text().splitlines():
        assert json.loads(line)["handlers"][0]["name"] == "job"


# dead --------------------------------------------------------------------------------------------
def make_dead_letters(r: redis.Redis, redis_url: str, out: Path, start: Any) -> None:
    worker = start(APP, "--url", redis_url)
    eventually(lambda: subscribers(r) == 1, "the worker to subscribe")
    r.lpush(QUEUE, "reject", "reject", "reject")
    for _ in range(3):
        r.xadd(STREAM, {"kind": "reject"})
    eventually(
        lambda: r.llen(f"{{{QUEUE}}}:dead") == 3 and r.xlen(f"{{{STREAM}}}:dead") == 3,
        "3 dead letters of each",
    )
    assert worker.stop() == 0, worker.output()


def test_dead_lists_requeues_and_purges_a_queue(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    make_dead_letters(r, redis_url, out, start_worker)
    dead_key = f"{{{QUEUE}}}:dead"
    letters = [json.loads(x) for x in r.lrange(dead_key, 0, -1)]

    shown = run_cli("dead", APP, "job", "--url", redis_url, "--show", "2")
    assert shown.returncode == 0, shown.stderr
    assert sum(letter["id"] in shown.stdout for letter in letters) == 2
    assert "Reject: rejected by the test app" in shown.stdout
    assert r.llen(dead_key) == 3 and r.llen(QUEUE) == 0  # showing changes nothing

    done = run_cli("dead", APP, QUEUE, "--url", redis_url, "--requeue", letters[0]["id"])
    assert done.returncode == 0, done.stderr
    assert r.llen(dead_key) == 2 and r.lrange(QUEUE, 0, -1) == ["reject"]
    assert letters[0]["id"] not in r.lrange(dead_key, 0, -1)[0]

    done = run_cli("dead", APP, "job", "--url", redis_url, "--requeue", "--all")
    assert done.returncode == 0, done.stderr
    assert r.llen(dead_key) == 0 and r.llen(QUEUE) == 3

    r.lpush(dead_key, json.dumps({"id": "foreign", "body": "x", "error": "e"}))
    # Without a terminal to confirm on, --purge needs --yes: refused, nothing deleted.
    refused = run_cli("dead", APP, "job", "--url", redis_url, "--purge")
    assert refused.returncode == 2
    assert "--yes" in one_error_line(refused)
    assert r.llen(dead_key) == 1
    done = run_cli("dead", APP, "job", "--url", redis_url, "--purge", "--yes")
    assert done.returncode == 0, done.stderr
    assert r.exists(dead_key) == 0 and r.llen(QUEUE) == 3


def test_dead_lists_requeues_and_purges_a_stream(
    redis_url: str, r: redis.Redis, out: Path, start_worker: Callable[..., Worker]
) -> None:
    make_dead_letters(r, redis_url, out, start_worker)
    dead_key = f"{{{STREAM}}}:dead"
    entries = r.xrange(dead_key)
    assert [fields["group"] for _, fields in entries] == [GROUP] * 3

    shown = run_cli("dead", APP, "event", "--url", redis_url)
    assert shown.returncode == 0, shown.stderr
    assert all(entry_id in shown.stdout for entry_id, _ in entries)
    assert r.xlen(dead_key) == 3

    length = r.xlen(STREAM)
    first_id, first = entries[0]
    done = run_cli("dead", APP, "event", "--url", redis_url, "--requeue", first_id)
    assert done.returncode == 0, done.stderr
    assert r.xlen(dead_key) == 2 and r.xlen(STREAM) == length + 1
    assert r.xrevrange(STREAM, count=1)[0][1] == {
        **json.loads(first["fields"]),
        "aioredq-group": GROUP,  # addressed to the group whose letter it was
    }

    done = run_cli("dead", APP, STREAM, "--url", redis_url, "--requeue", "--all")
    assert done.returncode == 0, done.stderr
    assert r.xlen(dead_key) == 0 and r.xlen(STREAM) == length + 3

    r.xadd(dead_key, {"original_id": "1-1", "error": "foreign"})
    done = run_cli("dead", APP, "event", "--url", redis_url, "--purge", "--yes")
    assert done.returncode == 0, done.stderr
    assert r.exists(dead_key) == 0


@pytest.mark.parametrize(
    ("name", "message"),
    [("nope", "no handler, queue or stream named 'nope'"), ("notice", "pub/sub")],
)
def test_dead_with_a_name_that_has_no_dead_letters_is_exit_2(name: str, message: str) -> None:
    done = run_cli("dead", APP, name)
    assert done.returncode == 2
    assert message in one_error_line(done)
