"""The job worker's process, kept alive beside `tunelab serve`'s HTTP process.

    worker = WorkerSupervisor(data_dir, max_jobs=1, launcher=None, events=events)
    ...                      # the worker trains jobs in its own process; one that dies is started again
    worker.stop()

Jobs train in their own process, so requests are answered while a job trains; a worker that exits unasked
(killed, out of memory) is started again after a second, and resumes the job it had from its last checkpoint.
The first worker is forked from the server as it starts, sharing what the server has imported (prefork.py);
one started again is a fresh process, since by then the server runs threads a fork would not carry.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.process import configure_process
from tunelab.server import prefork, worker


def worker_command(data_dir: Path, max_jobs: int = 1, launcher: str | None = None) -> list[str]:
    """The worker's command line: this Python running the worker module (named from the module itself, so
    the link is one the import contract sees)."""
    return [sys.executable, "-m", worker.__name__, str(data_dir), "--max-jobs", str(max_jobs),
            "--server-pid", str(os.getpid()), *(["--launcher", launcher] if launcher else [])]


class WorkerSupervisor:
    """The job worker's process, started again (after a second's pause) whenever it exits unasked."""

    def __init__(self, data_dir: Path, max_jobs: int = 1, launcher: str | None = None, events: Events = NO_EVENTS):
        self.command, self.events = worker_command(data_dir, max_jobs, launcher), events
        self.stopping, self.lock = threading.Event(), threading.Lock()
        if sys.platform.startswith("linux"):
            server = os.getpid()
            self.process = prefork.fork(lambda: _work_forked(data_dir, max_jobs, launcher, server))
        else:
            self.process = subprocess.Popen(self.command)
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        while True:
            code = self.process.wait()
            if self.stopping.wait(1):
                return
            with self.lock:
                if self.stopping.is_set():
                    return
                self.events.warning(f"tunelab serve: the job worker exited (status {code}); starting it again",
                                    exit_status=code)
                self.process = subprocess.Popen(self.command)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            self.process.terminate()
        self.process.wait(30)


def _work_forked(data_dir: Path, max_jobs: int, launcher: str | None, server: int) -> None:
    configure_process()
    worker.work(data_dir, max_jobs, launcher, server)
