"""Files: written so a crash never leaves a half-written one, and checked before any work is done.

    with atomic_path(out) as temporary:            # write `temporary` (a file or, with directory=True, a
        save(temporary)                            # directory); it is renamed onto `out` when the block ends
    write_text_atomically(path, text)

The temporary sits beside the target (same filesystem, so the rename is atomic) under a unique hidden name
(`.NAME.tmp-PID-RANDOM`), so two processes writing the same target never share one; if the block fails
it is removed and the target is as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMPORARY_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    """A unique hidden name beside `path` for writing it."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def atomic_path(path: str | Path, directory: bool = False, replace: bool = True) -> Iterator[Path]:
    """A temporary path to write `path` through (a file, or a directory with `directory=True`).

    The temporary does not exist yet: the block creates it (a writer that makes its own directory, such as
    `save_pretrained`, can be handed it as it is). When the block completes the temporary is renamed onto
    `path`: readers see the old version or the new one, never a part. `replace=False` refuses
    (FileExistsError) to put a directory over an existing one; a file is always replaced. If the block
    raises, the temporary is removed and `path` is untouched; a full or read-only disk is raised as a
    StorageError that names `path`.
    """
    path = Path(path)
    with storage_errors_named(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with storage_errors_named(path):
            yield temporary
        if directory and path.exists():
            if not replace:
                raise FileExistsError(f"{path} already exists; refusing to overwrite it")
            old = temporary_name(path)
            path.rename(old)
            temporary.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            temporary.replace(path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


class StorageError(OSError):
    """A write that failed because of where it writes: the disk is full, read-only, or not ours to write."""

    def __str__(self) -> str:
        return f"{self.filename}: cannot write it: {self.strerror.lower()}"

    @property
    def condition(self) -> str:
        """What is wrong with the disk, to finish "the disk …"."""
        return {errno.EROFS: "is read-only", errno.EACCES: "is not writable here"}.get(self.errno, "is full")


# Errors that are about the storage, not the data; libraries that are not Python (safetensors) report them as
# "… (os error 28)".
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


@contextmanager
def storage_errors_named(path: str | Path) -> Iterator[None]:
    """Within the block, a full or read-only disk is raised as a StorageError naming `path`; any other error
    passes as it is."""
    try:
        yield
    except Exception as error:
        problem = as_storage_error(error, path)
        if problem is error:
            raise
        raise problem from error


def as_storage_error(error: BaseException, path: str | Path) -> BaseException:
    """`error` as a StorageError naming `path` when it means the storage refused the write; else `error`."""
    if isinstance(error, StorageError):
        return error
    code = error.errno if isinstance(error, OSError) else None
    if code is None and (found := re.search(r"os error (\d+)", str(error))):
        code = int(found.group(1))
    if code not in STORAGE_ERRNOS:
        return error
    return StorageError(code, os.strerror(code), str(path))


def read_yaml_file(path: str | Path):
    """A user's YAML file (settings, a rubric, answers) parsed; a file that is not UTF-8 text or not YAML is a
    ValueError naming it and saying where."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start} is {error.object[error.start:error.start + 1]!r})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None


def write_text_atomically(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomically(path: str | Path, data) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def remove_stale_temporaries(directory: Path) -> None:
    """Delete what writes interrupted by a crash left in `directory` (their temporaries, never a target)."""
    for stale in Path(directory).glob(f".*{TEMPORARY_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


class OutputError(ValueError):
    """An output path that cannot be written, or must not be: the message says which and why."""


def check_output_path(path: Path, overwrite: bool = False, inputs: list[Path] = ()) -> None:
    """Refuse, before any work is done, an output that would fail or destroy something.

    An input is never overwritten, even with `overwrite`. The checks name the path and the reason: an
    existing file (without `overwrite`), a directory, a parent that is a file, a directory we cannot write.
    """
    path = Path(path)
    for source in inputs:
        if path.exists() and Path(source).exists() and path.resolve() == Path(source).resolve():
            raise OutputError(f"{path}: this is the input; choose another output (inputs are never overwritten)")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass --force to replace it")
    _check_can_create_in(path, path.parent)


def check_output_directory(path: Path) -> None:
    """Refuse a run or output directory that is a file, or that sits under one or where we cannot write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; an output directory is needed here")
    _check_can_create_in(path, path)


def _check_can_create_in(path: Path, directory: Path) -> None:
    for ancestor in (directory, *directory.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputError(f"{path}: {ancestor} is a file, not a directory")
            if os.statvfs(ancestor).f_flag & os.ST_RDONLY:
                raise OutputError(f"{path}: cannot write in {ancestor} (read-only file system)")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: cannot write in {ancestor} (permission denied)")
            return


def input_file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a data file (missing, a directory, a pipe or device), or None.

    Checked before opening: reading a FIFO would block forever, and a directory gives a confusing error.
    """
    path = Path(path)
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory; give a file"
    if not path.is_file():
        return "not a regular file (a pipe, socket or device); give a file"
    return None
