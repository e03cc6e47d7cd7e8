"""Writing files so a crash never leaves a half-written one: write beside the target, then rename."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomically(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)  # only left if writing or renaming failed


def write_json_atomically(path: Path, data) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")



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
