"""Python graders that attack: each ends in a graded error within its limit, and nothing outside is touched.

They try to read the server's database and key, list the home directory and read a secret in it, open a
socket to a server listening on this machine, fork without end, allocate 8 GB and run forever — through the
real sandbox (bubblewrap, namespaces, rlimits, a seccomp filter), with the real server's SQLite store.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from tunelab.graders.grade import Grading
from tunelab.graders.sandbox import Limits, PythonSandbox
from tunelab.graders.templates import Sample

LIMITS = Limits(seconds_per_sample=3.0, memory_bytes=1024**3)


def python_grader(source: str) -> dict:
    return {"type": "python", "name": "hostile", "source": source}


def grade(source: str, item: dict, sandbox: PythonSandbox | None = None):
    started = time.monotonic()
    graded = Grading(python_grader(source), sandbox=sandbox or PythonSandbox(LIMITS)).grade_one(Sample("4"), item)
    return graded, time.monotonic() - started


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sandboxes_left() -> list[int]:
    """This process's children still alive (each sandbox is one; what runs in it dies with its PID namespace),
    but for multiprocessing's resource tracker, which an earlier test's spawned processes leave for the
    process's lifetime."""
    children = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            command = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"multiprocessing.resource_tracker" not in command:
            children.append(int(name))
    return children


@pytest.fixture()
def server_data(tmp_path, monkeypatch):
    """A real server store (its SQLite database, a project key kept as the server keeps it) and the server's own
    key in this process's environment, as `tunelab serve --api-key` runs."""
    from tunelab.server.store import Store

    store = Store(tmp_path / "data")
    store.execute("CREATE TABLE IF NOT EXISTS secrets (value TEXT)")
    store.execute("INSERT INTO secrets VALUES (?)", ("sk-tunelab-secret",))
    key_file = tmp_path / "data" / "admin.key"
    key_file.write_text("sk-admin-" + uuid.uuid4().hex)
    monkeypatch.setenv("TUNELAB_API_KEY", key_file.read_text())
    return tmp_path / "data"


def test_reading_the_servers_database_and_key(server_data):
    import sqlite3

    database, key_file = server_data / "tunelab.db", server_data / "admin.key"
    key_before = digest(key_file)
    source = """
import os
def grade(sample, item):
    found = []
    for name in ("TUNELAB_API_KEY", "OPENAI_API_KEY"):
        if os.environ.get(name):
            found.append(name)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if b"TUNELAB_API_KEY" in open(f"/proc/{pid}/environ", "rb").read():
                    found.append(pid)
            except OSError:
                pass
    if found:
        return 1.0
    os.remove(item["database"])  # and if reading were possible, destroy it
    return float("sk-" in open(item["key"]).read())
"""
    graded, seconds = grade(source, {"database": str(database), "key": str(key_file)})
    assert graded.reward == 0.0 and graded.errors == {"python_grader_runtime_error"}
    assert "FileNotFoundError" in graded.python_runtime_details
    assert seconds < LIMITS.seconds_per_sample
    assert digest(key_file) == key_before
    check = sqlite3.connect(database)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert check.execute("SELECT value FROM secrets").fetchall() == [("sk-tunelab-secret",)]
    check.close()


def test_listing_the_home_directory_and_reading_a_secret_in_it():
    home = Path.home()
    secret = home / f".tunelab-sandbox-secret-{uuid.uuid4().hex}"
    secret.write_text("a secret in the home directory")
    try:
        source = """
import os
def grade(sample, item):
    names = os.listdir(item["home"]) if os.path.isdir(item["home"]) else []
    for name in names:
        if name == item["secret"]:
            return 1.0
    return float(open(os.path.join(item["home"], item["secret"])).read() != "")
"""
        graded, seconds = grade(source, {"home": str(home), "secret": secret.name})
        assert graded.reward == 0.0 and graded.errors == {"python_grader_runtime_error"}
        assert "FileNotFoundError" in graded.python_runtime_details
        assert seconds < LIMITS.seconds_per_sample
        assert secret.read_text() == "a secret in the home directory"
    finally:
        secret.unlink()


def test_listing_the_sandbox_shows_only_the_python_installation():
    """What exists in the sandbox at all: /usr, the Python installation (and the directories leading to it),
    /proc, /dev, an empty /tmp — no /etc, no /home, no /work, no data."""
    source = """
import os, json
def grade(sample, item):
    raise RuntimeError(json.dumps({"root": sorted(os.listdir("/")), "tmp": os.listdir("/tmp"), "cwd": os.getcwd(),
                                   "uid": os.getuid()}))
"""
    graded, _ = grade(source, {})
    seen = json.loads(graded.python_runtime_details.strip().splitlines()[-1].split("RuntimeError: ", 1)[1])
    pythons = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix)]
    roots = {p.parts[1] for p in pythons}
    under_tmp = {p.parts[2] for p in pythons if p.parts[1] == "tmp"}  # a clone in a temporary directory
    assert set(seen["root"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "proc", "dev", "tmp"} | roots
    assert "etc" not in seen["root"] and set(seen["tmp"]) == under_tmp and seen["cwd"] == "/tmp"
    assert seen["uid"] == 65534


def test_a_path_inside_the_python_installation_can_be_hidden():
    secret_dir = Path(sys.prefix) / f"tunelab-sandbox-test-{uuid.uuid4().hex}"
    secret_dir.mkdir()
    try:
        (secret_dir / "tunelab.db").write_text("data")
        source = "def grade(sample, item):\n    return float(open(item['path']).read() == 'data')\n"
        item = {"path": str(secret_dir / "tunelab.db")}
        assert grade(source, item)[0].reward == 1.0  # visible, without being hidden
        graded, _ = grade(source, item, PythonSandbox(LIMITS, hidden=(secret_dir,)))
        assert graded.reward == 0.0 and "FileNotFoundError" in graded.python_runtime_details
    finally:
        (secret_dir / "tunelab.db").unlink()
        secret_dir.rmdir()


def test_opening_a_socket_even_to_this_machine():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    try:
        source = """
import socket
def grade(sample, item):
    socket.create_connection(("127.0.0.1", item["port"]), timeout=2).sendall(b"hello")
    return 1.0
"""
        graded, seconds = grade(source, {"port": listener.getsockname()[1]})
        assert graded.reward == 0.0 and graded.errors == {"python_grader_runtime_error"}
        assert "ConnectionRefusedError" in graded.python_runtime_details or "unreachable" in graded.python_runtime_details
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected
        outside, _ = grade(source.replace('item["port"]', '443').replace('"127.0.0.1"', '"1.1.1.1"'), {})
        assert outside.errors == {"python_grader_runtime_error"}
        assert "Network is unreachable" in outside.python_runtime_details
    finally:
        listener.close()


def test_forking_without_end():
    source = "import os\ndef grade(sample, item):\n    while True:\n        os.fork()\n"
    graded, seconds = grade(source, {})
    assert graded.reward == 0.0 and graded.errors == {"python_grader_runtime_error"}
    assert "BlockingIOError" in graded.python_runtime_details  # refused at the first fork
    assert seconds < LIMITS.seconds_per_sample
    assert sandboxes_left() == []
    spawned, _ = grade("import subprocess\ndef grade(sample, item):\n    subprocess.run(['true'])\n    return 1.0\n", {})
    assert spawned.errors == {"python_grader_runtime_error"}
    threads, _ = grade("import threading\ndef grade(sample, item):\n    t = threading.Thread(target=lambda: None)\n"
                       "    t.start(); t.join()\n    return 1.0\n", {})
    assert threads.reward == 1.0, threads.details  # threads are not processes: allowed


def test_allocating_8_gb():
    graded, seconds = grade("def grade(sample, item):\n    block = bytearray(8 * 1024**3)\n    return 1.0\n", {})
    assert graded.reward == 0.0 and graded.errors == {"python_grader_runtime_error"}
    assert "MemoryError" in graded.python_runtime_details
    assert seconds < LIMITS.seconds_per_sample
    # In 256 MB pieces: `bytes` of zeros come from calloc, which maps fresh pages without writing them, so the
    # address-space limit stops it after eight pieces at once. (`bytearray` writes its zeros: on a busy machine
    # writing the 1.75 GB before the limit outlasted the sample's time.)
    piecemeal, _ = grade("def grade(sample, item):\n    blocks = [bytes(256 * 1024**2) for _ in range(32)]\n"
                         "    return 1.0\n", {})
    assert piecemeal.errors == {"python_grader_runtime_error"} and "MemoryError" in piecemeal.python_runtime_details


def test_running_forever_is_stopped_at_its_limit_and_the_rest_still_graded():
    source = "def grade(sample, item):\n    while item['spin']:\n        pass\n    return 1.0\n"
    started = time.monotonic()
    graded = Grading(python_grader(source), sandbox=PythonSandbox(LIMITS)).grade(
        [Sample("a"), Sample("b"), Sample("c")], [{"spin": False}, {"spin": True}, {"spin": False}])
    seconds = time.monotonic() - started
    assert [g.reward for g in graded] == [1.0, 0.0, 1.0]
    assert graded[1].errors == {"python_grader_server_error", "unresponsive_reward_error"}
    assert graded[1].python_server_error_type == "timeout"
    assert LIMITS.seconds_per_sample <= seconds < LIMITS.seconds_per_sample + 8  # two sandboxes started, on a busy machine
    assert sandboxes_left() == []


def test_a_grader_without_bubblewrap_is_not_run(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    graded, _ = grade("def grade(sample, item):\n    return 1.0\n", {})
    assert graded.reward == 0.0 and graded.python_server_error_type == "unavailable"
    assert "install bubblewrap" in graded.details[0]
