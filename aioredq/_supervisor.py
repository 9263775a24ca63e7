"""``--workers N``: run N worker processes, restart one that dies, stop them all on a signal.

Each worker gets its own process group, so a Ctrl-C in a terminal reaches the workers once
(forwarded from here) rather than twice (a second signal means "exit at once").

A worker that dies (killed, out of memory, a crash) is restarted after a back-off that starts
at ``RESTART_BACKOFF.base`` seconds and doubles up to ``RESTART_BACKOFF.cap``; it starts again
from the beginning once a worker has run ``RESTART_RESET`` seconds. A worker that exits with
status 2 met a usage or configuration error (a wrong-typed key, a missing ACL permission, a
wrong password): restarting cannot fix that, so every worker is stopped and the supervisor
exits 2 as well.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from ._backoff import Backoff

# Set in the environment of the processes that ``--workers N`` starts: the supervisor's pid.
SUPERVISOR_ENV = "AIOREDQ_SUPERVISOR_PID"
# ... and the worker's index (0 to N-1): worker i serves its metrics on --metrics-port + i.
WORKER_INDEX_ENV = "AIOREDQ_WORKER_INDEX"
RESTART_BACKOFF = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=False)
RESTART_RESET = 60.0
POLL_SECONDS = 0.1
CONFIGURATION_ERROR = 2
log = logging.getLogger("aioredq")


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # deaths in a row, for the back-off
    restart_at: float = 0.0
    signalled: int = 0  # signals forwarded to the current process

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def supervise(child_args: list[str], workers: int) -> int:
    """Run ``workers`` processes of ``python -m aioredq child_args`` until SIGINT/SIGTERM;
    returns the exit status."""
    pool = [_Worker(index) for index in range(workers)]
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for worker in pool:
            _signal(worker, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    for worker in pool:
        if received:
            break
        _spawn(worker, child_args, env, received)
    log.info(
        "supervisor (pid %d): started %d workers (pids %s)",
        os.getpid(),
        workers,
        ", ".join(str(w.proc.pid) for w in pool if w.proc is not None),
    )
    status = 0
    while not received:
        now = time.monotonic()
        for worker in pool:
            status = _tend(worker, now, child_args, env, received)
            if status:
                break
        if status:
            break
        time.sleep(POLL_SECONDS)
    if status:
        for worker in pool:
            _signal(worker, signal.SIGTERM)
    codes = [worker.proc.wait() for worker in pool if worker.proc is not None]
    if status:
        return status
    failed = [c for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)]
    if not failed:
        return 0
    return 128 - failed[0] if failed[0] < 0 else failed[0]


def _tend(
    worker: _Worker, now: float, child_args: list[str], env: dict[str, str], received: list[int]
) -> int:
    """Restart ``worker`` when due, or note that it exited; returns CONFIGURATION_ERROR when
    it exited with one (restarting cannot fix that), else 0."""
    if worker.proc is None:
        if now >= worker.restart_at:
            _spawn(worker, child_args, env, received)
            assert worker.proc is not None
            log.info("worker %d restarted (pid %d)", worker.index, worker.proc.pid)
        return 0
    code = worker.proc.poll()
    if code is None:
        return 0
    ran = now - worker.started_at
    if code == CONFIGURATION_ERROR:
        log.error(
            "worker %d (pid %d) exited with status 2 (see its error above): "
            "restarting cannot fix that; stopping",
            worker.index,
            worker.proc.pid,
        )
        return CONFIGURATION_ERROR
    worker.failures = 1 if ran >= RESTART_RESET else worker.failures + 1
    delay = RESTART_BACKOFF.delay(worker.failures)
    log.warning(
        "worker %d (pid %d) %s after %.1f s; restarting it in %g s",
        worker.index,
        worker.proc.pid,
        _how(code),
        ran,
        delay,
    )
    worker.proc, worker.restart_at = None, now + delay
    return 0


def _spawn(
    worker: _Worker, child_args: list[str], env: dict[str, str], received: list[int]
) -> None:
    worker.signalled = 0
    worker.proc = subprocess.Popen(
        [sys.executable, "-m", "aioredq", *child_args],
        env={**env, WORKER_INDEX_ENV: str(worker.index)},
        process_group=0,
    )
    worker.started_at = time.monotonic()
    if received and not worker.signalled:  # a signal came while it was starting: pass it on
        _signal(worker, received[-1])


def _signal(worker: _Worker, signum: int) -> None:
    if worker.proc is not None and worker.running:
        worker.proc.send_signal(signum)
        worker.signalled += 1


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def without_workers(args: list[str]) -> list[str]:
    """The command line of one worker: the supervisor's, without ``--workers``."""
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
