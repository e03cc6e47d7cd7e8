"""A run packed into one tar file (the server's second result file) and unpacked elsewhere: only a run's own
files come out, and an archive with anything else — a link, a path leaving the folder — is refused whole."""

import io
import tarfile

import pytest

from tunelab.core.settings import TrainConfig
from tunelab.runs.archive import BadRunArchive, pack_run, unpack_run
from tunelab.runs.rundir import RunDir
from tunelab.train.local import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir, support_conversations):
    import json

    folder = tmp_path_factory.mktemp("archive")
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:8]))
    return train(TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(folder / "run"), n_epochs=1,
                             batch_size=4, checkpoint_every=1))


def test_a_packed_run_unpacks_to_the_same_weights_without_its_checkpoints(run_dir, tmp_path):
    archive = pack_run(run_dir, tmp_path / "run.tar")
    run = unpack_run(archive, tmp_path / "copy")
    assert run.is_finished() and run.job() == RunDir(run_dir).job()
    original = sorted(p.relative_to(run_dir / "adapter") for p in (run_dir / "adapter").rglob("*"))
    assert sorted(p.relative_to(run.adapter_dir) for p in run.adapter_dir.rglob("*")) == original
    for name in original:
        if (run_dir / "adapter" / name).is_file():
            assert (run.adapter_dir / name).read_bytes() == (run_dir / "adapter" / name).read_bytes()
    assert (run_dir / "checkpoints").is_dir() and not run.checkpoints_dir.exists()
    with pytest.raises(FileExistsError):
        unpack_run(archive, tmp_path / "copy")  # never over an existing folder


def _archive_with(tmp_path, run_dir, extra) -> str:
    path = tmp_path / "hostile.tar"
    with tarfile.open(path, "w") as archive:
        archive.add(run_dir / "config.yaml", arcname="config.yaml")
        archive.add(run_dir / "adapter", arcname="adapter")
        extra(archive)
    return path


@pytest.mark.parametrize("name, make", [
    ("a link out", lambda a: a.addfile(_info("adapter/evil", tarfile.SYMTYPE, linkname="/etc/passwd"))),
    ("a path leaving the folder", lambda a: a.addfile(_info("adapter/../../escape.txt"), io.BytesIO(b"x"))),
    ("a device", lambda a: a.addfile(_info("adapter/null", tarfile.CHRTYPE))),
    ("an absolute path", lambda a: a.addfile(_info("/tmp/absolute.txt"), io.BytesIO(b"x"))),
    ("a file a run does not have", lambda a: a.addfile(_info("setup.py"), io.BytesIO(b"x"))),
])
def test_hostile_archives_are_refused_and_nothing_is_written(run_dir, tmp_path, name, make):
    with pytest.raises(BadRunArchive):
        unpack_run(_archive_with(tmp_path, run_dir, make), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escape.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hostile.tar"]  # no temporary left behind


def test_a_damaged_archive_is_a_clear_error(tmp_path):
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(BadRunArchive, match="broken.tar: not a readable tar archive"):
        unpack_run(tmp_path / "broken.tar", tmp_path / "out")


def _info(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, 0 if kind != tarfile.REGTYPE else 1
    return info
