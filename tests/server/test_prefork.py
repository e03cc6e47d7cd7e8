"""The worker's job and task processes (server/prefork.py): forked once the worker has imported what they
need, answering as a fresh process does — exit status, a signal's negative status, the job's environment —
and started afresh under a launcher."""

import os
import signal
import sys
import time

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
