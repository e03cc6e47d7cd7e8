"""A finished run as one tar file, and back: how a run trained on a `tunelab serve` reaches the machine that
asked for it.

The server attaches the archive to a succeeded job as a second result file (purpose `fine-tune-results`,
`<job id>-run.tar`), after the metrics CSV that OpenAI's clients expect first; a client that does not
know it ignores it. The archive holds what `eval`, `chat` and `export` read — the settings, the job record,
events, metrics, the loss curve, the trained weights (LoRA adapter or full model, safetensors) and the
tokenizer with its chat template — and not the checkpoints, which only resuming needs.

Unpacking accepts only those names, as regular files and directories (tarfile's `data` filter refuses
links, devices and paths leaving the target), into a temporary directory renamed into place at the end.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from tunelab.core.files import atomic_path
from tunelab.runs.rundir import RunDir

RUN_FILES = ("config.yaml", "job.json", "events.jsonl", "metrics.csv", "loss_curve.png")
RUN_FOLDERS = ("adapter", "model", "tokenizer")


class BadRunArchive(ValueError):
    """The archive is not a tunelab run (or holds something a run does not)."""


def pack_run(run_dir: str | Path, target: str | Path) -> Path:
    """Write the finished run at `run_dir` to the tar file `target` (atomically); returns `target`."""
    run = RunDir(run_dir)
    if not run.is_finished():
        raise BadRunArchive(f"{run.path}: not a finished run (no trained weights and settings)")
    target = Path(target)
    with atomic_path(target) as temporary, tarfile.open(temporary, "w") as archive:
        for name in RUN_FILES + RUN_FOLDERS:
            if (run.path / name).exists():
                archive.add(run.path / name, arcname=name)
    return target


def unpack_run(archive_file: str | Path, out: str | Path) -> RunDir:
    """Extract a run archive to `out` (which must not exist yet) and return it as a finished run."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; refusing to overwrite it")
    try:
        with tarfile.open(archive_file, "r") as archive:
            members = archive.getmembers()
            unexpected = [m.name for m in members if m.name.split("/")[0] not in RUN_FILES + RUN_FOLDERS
                          or not (m.isfile() or m.isdir())]
            if unexpected:
                raise BadRunArchive(f"{archive_file}: not a tunelab run archive (holds {unexpected[0]!r})")
            with atomic_path(out, directory=True, replace=False) as temporary:
                archive.extractall(temporary, members=members, filter="data")
    except tarfile.FilterError as error:
        raise BadRunArchive(f"{archive_file}: refused, it holds an unsafe entry ({error})") from None
    except (tarfile.TarError, EOFError) as error:
        raise BadRunArchive(f"{archive_file}: not a readable tar archive ({error})") from None
    run = RunDir(out)
    if not run.is_finished():
        raise BadRunArchive(f"{archive_file}: the archive holds no trained weights and settings")
    return run
