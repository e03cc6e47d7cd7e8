"""Python graders run here: user code, in a separate process that sees nothing of ours.

The mechanism is bubblewrap (`bwrap`, the sandbox Flatpak runs on; Debian/Ubuntu `apt install bubblewrap`,
Fedora `dnf install bubblewrap`), chosen over hand-made `unshare` calls because it is the field's tool
for exactly this, is small and audited, and is the one unprivileged user namespaces are still allowed to
(Ubuntu 24.04's AppArmor refuses them to other programs). Per batch of samples, one process:

- new user, PID, network, IPC, UTS and cgroup namespaces (`--unshare-all`): no network at all (only a
  loopback that is down), no view of our processes, every capability dropped, running as `nobody`;
- a new, empty root: read-only `/usr` and the Python installation (its base prefix and the virtual
  environment, so the grader can import numpy and the like), a fresh `/proc`, a minimal `/dev`, an empty
  16 MB-per-file `/tmp` as its working directory. Nothing else exists in it: no home directory, no `/etc`, no
  data directory, no keys, no database; a path we were asked to hide that lies inside the Python
  installation is covered with an empty tmpfs;
- an empty environment (no keys in variables), its own session (it cannot type into our terminal), killed
  when we die (`--die-with-parent`);
- limits (setrlimit, inherited): address space (memory), CPU seconds, processes (a fork bomb stops there),
  file size, open files; and a wall-clock limit per sample, after which the whole sandbox is killed (its PID
  namespace goes with it) and the samples not graded yet get a fresh one.

What it does not protect against: a kernel exploit (the sandbox shares our kernel; there is no seccomp
filter here), reading world-readable files under `/usr` and the Python installation, and using the CPU and
memory it is allowed while it runs. Where bubblewrap is missing or user namespaces are off, python graders
are not run at all: each sample gets `python_grader_server_error` saying how to install it.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HARNESS = (Path(__file__).with_name("sandbox_harness.py")).read_text(encoding="utf-8")
CLONE_THREAD = 0x00010000
# Calls a grader never needs and a kernel exploit often does: each fails with "operation not permitted".
REFUSED_CALLS = ("ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "unshare",
                 "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
                 "io_uring_setup", "kexec_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
                 "swapoff", "acct")
MAX_RESULT_LINE = 64 * 1024
INSTALL_HINT = "install bubblewrap (apt install bubblewrap, or dnf install bubblewrap)"


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use. OpenAI's own: 2 minutes and 2 GB a grader run; here per sample."""

    seconds_per_sample: float = 60.0
    memory_bytes: int = 2 * 1024**3
    processes: int = 64
    file_bytes: int = 16 * 1024**2
    open_files: int = 64


@dataclass
class Outcome:
    """One sample's grade: a score, or an error of OpenAI's kinds."""

    score: float | None = None
    runtime_error: str | None = None  # the grader raised, or returned something that is not a number
    server_error: str | None = None  # the sandbox: "timeout", "killed", "unavailable", …
    details: str = ""
    seconds: float = 0.0


@dataclass
class PythonSandbox:
    limits: Limits = field(default_factory=Limits)
    hidden: tuple[Path, ...] = ()  # paths that must stay out of sight even if they lie inside the Python installation

    def grade(self, source: str, cases: list[tuple[dict, dict]]) -> list[Outcome]:
        """Each (sample, item) graded by the source's `grade`, in order."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return [Outcome(server_error="unavailable", details=f"python graders run in a sandbox: {INSTALL_HINT}")
                    for _ in cases]
        outcomes: list[Outcome] = []
        while len(outcomes) < len(cases):
            outcomes += self._run(bwrap, source, cases[len(outcomes):])
        return outcomes

    def _run(self, bwrap: str, source: str, cases: list[tuple[dict, dict]]) -> list[Outcome]:
        """Run the cases in one sandbox until they are done or one of them is stopped (that one gets its
        error; the caller starts a new sandbox for the rest)."""
        with _seccomp_filter() as rules:
            process = subprocess.Popen(
                [bwrap, "--seccomp", str(rules.fileno()), *self._arguments(), sys.executable, "-I", "-c", HARNESS],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=self._limit,
                start_new_session=True, pass_fds=(rules.fileno(),), env={"PATH": "/usr/bin:/bin"})
        lines: queue.Queue = queue.Queue()
        stderr_tail: list[bytes] = []
        request = json.dumps({"source": source, "cases": [{"sample": s, "item": i} for s, i in cases]}).encode()
        streams = [threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True),
                   threading.Thread(target=_keep_tail, args=(process.stderr, stderr_tail), daemon=True),
                   threading.Thread(target=_write_and_close, args=(process.stdin, request), daemon=True)]
        for thread in streams:
            thread.start()
        outcomes: list[Outcome] = []
        started = time.monotonic()
        try:
            while len(outcomes) < len(cases):
                try:
                    line = lines.get(timeout=self.limits.seconds_per_sample)
                except queue.Empty:
                    outcomes.append(Outcome(server_error="timeout", seconds=round(time.monotonic() - started, 3),
                                            details=f"no grade within {self.limits.seconds_per_sample:g} s: stopped"))
                    return outcomes
                if line is None:  # the sandbox ended before grading every case
                    process.wait(timeout=5)
                    streams[1].join(timeout=5)
                    outcomes.append(self._ended(process.returncode, b"".join(stderr_tail)))
                    return outcomes
                outcomes.append(_outcome(line))
                started = time.monotonic()
            return outcomes
        finally:
            _kill(process, streams)

    def _ended(self, returncode: int, stderr: bytes) -> Outcome:
        message = stderr.decode("utf-8", "replace").strip()[-2000:]
        if message.startswith("bwrap:"):  # bubblewrap itself could not build the sandbox (user namespaces off)
            return Outcome(server_error="unavailable", details=f"{message} ({INSTALL_HINT}, and allow user namespaces)")
        if returncode is not None and returncode < 0:
            name = signal.Signals(-returncode).name
            return Outcome(server_error="killed", details=f"the grader was killed by {name}"
                           + (" (over its CPU time)" if name == "SIGXCPU" else ""))
        if "MemoryError" in message:
            return Outcome(runtime_error="MemoryError", details=message)
        return Outcome(server_error="exited", details=f"the grader's process ended (exit {returncode}): {message}")

    def _arguments(self) -> list[str]:
        # The fresh /proc, /dev and /tmp first: the Python installation may itself live under /tmp (a clone in a
        # temporary directory), and a later tmpfs on /tmp would hide it.
        mounts = ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind", "/usr", "/usr"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64"):  # merged-/usr systems link these into /usr
            path = Path("/", top)
            if path.is_symlink():
                mounts += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                mounts += ["--ro-bind", str(path), str(path)]
        python = _python_roots()
        for root in python:
            mounts += ["--ro-bind", str(root), str(root)]
        for hidden in self.hidden:
            hidden = Path(hidden).resolve()
            if any(hidden == root or root in hidden.parents for root in python):
                mounts += ["--tmpfs", str(hidden)]
        return ["--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL",
                "--uid", "65534", "--gid", "65534", "--hostname", "grader", *mounts, "--chdir", "/tmp",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
                "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "OMP_NUM_THREADS", "1",
                "--setenv", "OPENBLAS_NUM_THREADS", "1", "--setenv", "MKL_NUM_THREADS", "1"]

    def _limit(self) -> None:
        """In the child, before bwrap starts: limits every process of the sandbox inherits."""
        memory = self.limits.memory_bytes
        cpu = int(self.limits.seconds_per_sample) + 5
        for kind, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                            (resource.RLIMIT_NPROC, self.limits.processes), (resource.RLIMIT_FSIZE, self.limits.file_bytes),
                            (resource.RLIMIT_NOFILE, self.limits.open_files), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(kind, (value, value))


def _seccomp_filter():
    """The filter bwrap installs before the sandbox's first instruction (libseccomp, through pyseccomp): no
    fork, vfork, posix_spawn or clone of a process — threads stay allowed — so a fork bomb ends at its first
    fork (RLIMIT_NPROC alone does not hold when we run as root: the kernel does not count processes of uid 0);
    clone3 answers "not implemented" so the C library falls back to clone, whose flags a filter can read;
    and the calls in REFUSED_CALLS fail. Another architecture's system calls kill the process."""
    import errno

    import pyseccomp

    rules = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in ("fork", "vfork"):
        rules.add_rule(pyseccomp.ERRNO(errno.EAGAIN), name)
    rules.add_rule(pyseccomp.ERRNO(errno.EAGAIN), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_THREAD, 0))
    rules.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    for name in REFUSED_CALLS:
        rules.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    compiled = tempfile.TemporaryFile()
    rules.export_bpf(compiled)
    compiled.seek(0)
    return compiled


def _python_roots() -> list[Path]:
    """The directories this Python runs from: its base installation and the virtual environment, the
    smallest set that holds the interpreter, its standard library and site-packages."""
    roots: list[Path] = []
    for path in (sys.base_prefix, sys.prefix, Path(sys.executable).resolve().parent.parent):
        path = Path(path).resolve()
        if not any(path == root or root in path.parents for root in roots):
            roots = [root for root in roots if path not in root.parents] + [path]
    return roots


def _outcome(line: bytes) -> Outcome:
    try:
        result = json.loads(line)
    except json.JSONDecodeError:
        return Outcome(server_error="protocol", details="the sandbox answered something that is not a result")
    if "score" in result:
        return Outcome(score=float(result["score"]), seconds=result.get("seconds", 0.0))
    error = str(result.get("error", ""))
    return Outcome(runtime_error=error.strip().splitlines()[-1] if error.strip() else "error", details=error,
                   seconds=result.get("seconds", 0.0))


def _read_lines(stream, lines: queue.Queue) -> None:
    try:
        for line in iter(lambda: stream.readline(MAX_RESULT_LINE), b""):
            lines.put(line)
    finally:
        lines.put(None)


def _keep_tail(stream, tail: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read(4096), b""):
        tail.append(chunk)
        while sum(map(len, tail)) > 8192 and len(tail) > 1:
            tail.pop(0)


def _write_and_close(stream, data: bytes) -> None:
    try:
        stream.write(data)
        stream.close()
    except (BrokenPipeError, OSError):
        pass  # the sandbox ended first; its end is reported from its exit


def _kill(process: subprocess.Popen, streams: list[threading.Thread]) -> None:
    """The whole sandbox, then its pipes once their readers have seen the end."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    for thread in streams:
        thread.join(timeout=5)
    for stream in (process.stdout, process.stderr, process.stdin):
        try:
            stream.close()
        except OSError:
            pass
