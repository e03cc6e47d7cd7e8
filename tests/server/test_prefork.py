"""The worker's job and task processes (server/prefork.py): forked once the worker has imported what they
need, answering as a fresh process does — exit status, a signal's negative status, the job's environment —
and started afresh under a launcher. The server's first worker is forked too; one started again is fresh."""

import os
import signal
import sys
import time

import pytest

from bench.server_kills import alive, descendants
from tests.serving import Server
from tunelab.server.prefork import Forked, Starter


def wait(process, seconds=60):
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return process.returncode


def test_a_forked_process_has_the_jobs_environment_and_exits_as_a_fresh_one_would(tmp_path):
    lock = open(tmp_path / "worker.lock", "w")
    starter = Starter(dict(os.environ, TUNELAB_WORKER_PID=str(os.getpid())), keep_closed=[lock])
    assert starter.can_fork()  # a Linux CPU machine: nothing here has initialised CUDA

    def work():
        (tmp_path / "seen").write_text(f"{os.getppid()} {os.environ['TUNELAB_WORKER_PID']} {lock.closed}")

    done = starter.start([sys.executable, "-c", "raise SystemExit(9)"], work)
    assert isinstance(done, Forked) and wait(done) == 0
    assert (tmp_path / "seen").read_text() == f"{os.getpid()} {os.getpid()} True"  # the lock closed in the child only
    assert not lock.closed

    def fails():
        raise RuntimeError("the job's own error")

    assert wait(starter.start([], fails)) == 1
    assert wait(starter.start([], lambda: sys.exit(3))) == 3
    asleep = starter.start([], lambda: time.sleep(60))
    os.kill(asleep.pid, signal.SIGKILL)
    assert wait(asleep) == -signal.SIGKILL  # as subprocess reports a signal

    launched = starter.start([sys.executable, "-c", "raise SystemExit(7)"], work, launched=True)
    assert not isinstance(launched, Forked) and launched.wait(60) == 7  # a launcher's command, started afresh


def _command_line(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read()


def _worker_of(server, seconds=30) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = descendants(server.process.pid)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the server started no worker")


@pytest.mark.slow
def test_the_server_forks_its_first_worker_and_starts_a_lost_one_afresh(tmp_path):
    server = Server(tmp_path / "data")
    try:
        first = _worker_of(server)
        assert _command_line(first) == _command_line(server.process.pid)  # forked: the server's own image
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (again := _worker_of(server)) == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert again != first and b"tunelab.server.worker" in _command_line(again)  # started afresh
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while alive(again) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(again)  # a worker whose server has gone leaves too
