"""A real `tunelab serve` process, started by tests of the server and of what talks to it (eval's --compare)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package is built on

API_KEY = "sk-test-tunelab-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, data_dir, *arguments: str, prefix: tuple[str, ...] = (), env: dict | None = None):
        """`prefix`: a command the server runs under (e.g. nsenter into a namespace with a small disk);
        `env`: variables set for it (and so for its worker and jobs)."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.data_dir = Path(data_dir)
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tunelab.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
             "--api-key", API_KEY, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(os.environ, TUNELAB_API_KEY="", **(env or {})))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
            if self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"tunelab serve did not start: {self.process.stdout.read().decode()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def integrity_check(data_dir) -> str:
    """SQLite's own check of a server's database: "ok", or what it found."""
    import sqlite3
    from pathlib import Path

    with sqlite3.connect(Path(data_dir) / "tunelab.db") as database:
        return database.execute("PRAGMA integrity_check").fetchone()[0]
