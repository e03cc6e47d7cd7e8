"""The worker, and its job and task processes, forked from a process that has imported what they need.

A Python process started afresh spends about 4 s of CPU importing PyTorch, transformers and PEFT before a
job's first step (measured on a two-core EPYC: 70% of a tiny model's whole job, and the same 4 s before a
large model's). The worker imports them once, when its first job or task comes, and from then on forks each
job's and task's process from itself, so a second job starts training that much sooner.

The forked process is a process of its own as before: it is waited for, paused and killed the same way and
exits with the same status (a signal's as a negative number, as subprocess reports it), with the job's
environment. It closes the worker's lock, never uses the worker's database connection (SQLite's rule for a
fork: the child opens its own), and leaves with os._exit, so nothing of the worker's runs twice.

A fork is not taken where it would not be safe or where there is nothing to fork for: under a launcher
(`accelerate launch` starts processes of its own), outside Linux, and in a worker where CUDA has been
initialised (a forked process cannot use CUDA then). Those start the process afresh, as before.

The worker itself is forked the same way from `tunelab serve` as it starts (supervisor.py), which has
imported PyTorch for chat by then: the worker's first job imports only what is left (about 1.5 s of CPU
less). That fork happens once, before the server answers requests or starts a thread of its own; a worker
started again after it died is started afresh.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable

# What jobs and tasks import before their work starts; the worker imports it once.
PRELOADED = ("tunelab.train.local", "tunelab.eval.run", "tunelab.export.run", "peft")


class Forked:
    """A forked process, answering as subprocess.Popen does where its starter asks (pid, poll, wait,
    terminate, returncode); safe to ask from several threads."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)
        return self.returncode

    def terminate(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)


def fork(work: Callable[[], None], environment: dict | None = None, keep_closed: list = ()) -> Forked:
    """A process forked from this one that runs `work()` and exits (0, or 1 after printing what it raised,
    or the code it exits with), holding none of `keep_closed` and with `environment`'s variables."""
    sys.stdout.flush()
    sys.stderr.flush()
    # What this process holds now is never collected again (Python's advice before a fork): the child's
    # collections do not touch, and so do not copy, the pages it shares with this process.
    gc.freeze()
    pid = os.fork()
    if pid:
        return Forked(pid)
    _run_forked(work, environment or {}, keep_closed)  # never returns


class Starter:
    """Starts the worker's job and task processes: forked once it has preloaded, else afresh."""

    def __init__(self, environment: dict, keep_closed: list):
        """`environment`: the processes' variables; `keep_closed`: the worker's files a child must not hold."""
        self.environment = environment
        self.keep_closed = keep_closed
        self._can_fork: bool | None = None

    def can_fork(self) -> bool:
        if self._can_fork is None:
            self._can_fork = sys.platform.startswith("linux") and _preload()
        return self._can_fork

    def start(self, command: list[str], work: Callable[[], None], launched: bool = False):
        """The process that runs `work()`: forked from this one if it can be, else `command` started afresh
        (always under a launcher, `launched`, whose command starts the processes)."""
        if launched or not self.can_fork():
            return subprocess.Popen(command, env=self.environment)
        return fork(work, self.environment, self.keep_closed)


def _preload() -> bool:
    """Import what jobs and tasks need; whether a fork may follow (CUDA not initialised here)."""
    for name in PRELOADED:
        importlib.import_module(name)
    import torch

    return not torch.cuda.is_initialized()


def _run_forked(work: Callable[[], None], environment: dict, keep_closed: list) -> None:
    code = 1
    try:
        for handle in keep_closed:
            handle.close()
        os.environ.update(environment)
        work()
        code = 0
    except SystemExit as leaving:
        code = leaving.code if isinstance(leaving.code, int) else (0 if leaving.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as a fresh process would report it, then the exit status
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
