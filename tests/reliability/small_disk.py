"""A small filesystem for the full-disk and read-only tests: a tmpfs of a given size, mounted in a mount
namespace of its own (so nothing on the machine sees it, and no loop device or root login is needed),
held open by a sleeping process. Commands run inside with `nsenter`; the test reaches the files from
outside through /proc/PID/root, to fill the disk, free it, or look at what a command left.

As root, `unshare --mount`; otherwise a user namespace too (`unshare --map-root-user --mount`).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path


class SmallDisk:
    def __init__(self, size_kb: int):
        self.mount_point = tempfile.mkdtemp(prefix="small-disk-")
        self.as_user = os.geteuid() != 0
        self.holder = subprocess.Popen(
            ["unshare", *(["--map-root-user"] if self.as_user else []), "--mount", "sh", "-c",
             f"mount -t tmpfs -o size={size_kb}k tunelab-test {self.mount_point} && echo ready && exec sleep 3600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.holder.stdout.readline().strip() != "ready":
            raise RuntimeError(f"could not mount a tmpfs in a private namespace: {self.holder.stderr.read()}")

    def run(self, arguments: list[str], **options) -> subprocess.CompletedProcess:
        """Run a command that sees the small disk at `mount_point`."""
        return subprocess.run(self.command(arguments), capture_output=True, text=True, **options)

    def command(self, arguments: list[str]) -> list[str]:
        enter = ["nsenter", "--target", str(self.holder.pid), "--mount"]
        if self.as_user:
            enter += ["--user", "--preserve-credentials"]
        return [*enter, "--", *[str(a) for a in arguments]]

    def inside(self, relative: str = "") -> Path:
        """The path a command inside uses."""
        return Path(self.mount_point) / relative

    def outside(self, relative: str = "") -> Path:
        """The same file, reached from this process."""
        return Path(f"/proc/{self.holder.pid}/root") / self.mount_point.lstrip("/") / relative

    def fill(self, leave_kb: int = 0) -> None:
        """Write a ballast file until only `leave_kb` remain free."""
        stats = os.statvfs(self.outside())
        free = stats.f_bavail * stats.f_frsize - leave_kb * 1024
        with open(self.outside(".ballast"), "ab") as ballast:
            block = b"\0" * 65536
            while free > 0:
                try:
                    free -= ballast.write(block[: min(len(block), free)])
                except OSError:
                    break

    def free(self) -> None:
        self.outside(".ballast").unlink(missing_ok=True)

    def free_kb(self) -> int:
        stats = os.statvfs(self.outside())
        return stats.f_bavail * stats.f_frsize // 1024

    def read_only(self, read_only: bool = True) -> None:
        """Remount read-only (or back); a file still open for writing — a process that is exiting — makes the
        mount busy for a moment, so it is tried for up to 10 s."""
        for _ in range(20):
            remount = self.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", self.mount_point])
            if remount.returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(remount.stderr)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(10)
        os.rmdir(self.mount_point)

    def __enter__(self) -> "SmallDisk":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
