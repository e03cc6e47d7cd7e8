"""Training, conversion, export and the server on a small disk that fills up, and on one that turns
read-only (a tmpfs in a mount namespace of its own, tests/reliability/small_disk.py): each says so plainly,
naming the file, exits non-zero without a traceback, keeps what was there, and carries on once space is
freed."""

import json
import sys

import httpx2 as httpx
import pytest

from tests.reliability.small_disk import SmallDisk
from tests.serving import API_KEY, Server

pytestmark = [pytest.mark.slow, pytest.mark.reliability, pytest.mark.heavy]
TUNELAB = [sys.executable, "-m", "tunelab.cli"]


def temporaries(root):
    return [path.name for path in root.rglob("*.tmp-*")] + [path.name for path in root.rglob("*.partial-*")]


@pytest.fixture(scope="module")
def training_data(tmp_path_factory, support_conversations):
    path = tmp_path_factory.mktemp("full-disk") / "train.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:16]))
    return path


def train_arguments(data, model, out):
    return [*TUNELAB, "train", "--data", data, "--model", model, "--out", out, "--n-epochs", "12", "--batch-size",
            "4", "--checkpoint-every", "1", "--seed", "3", "--dtype", "fp32", "--quiet"]


def train_here(data, model, out):
    """The run `train_arguments` describes, trained in this process: where the run is only a starting point or
    the reference, a process of its own adds nothing (and costs its imports)."""
    from tunelab.core.settings import TrainConfig
    from tunelab.train.local import train

    return train(TrainConfig(data=str(data), model=str(model), out=str(out), n_epochs=12, batch_size=4,
                             checkpoint_every=1, seed=3, dtype="fp32"))


def test_training_stops_plainly_on_a_full_or_read_only_disk_and_resumes_to_the_same_adapter(
        tmp_path, training_data, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    reference = train_here(training_data, tiny_model_dir, tmp_path / "reference")
    with SmallDisk(8192) as disk:
        disk.fill(leave_kb=1400)  # room for the settings and three checkpoints, not a fourth
        run = disk.inside("run")
        full = disk.run(train_arguments(training_data, tiny_model_dir, run))
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
        assert "cannot write it: no space left on device" in full.stderr
        assert "the run keeps its last complete checkpoint (step-000003)" in full.stderr
        assert f"tunelab train --resume {run}" in full.stderr
        kept = sorted(p.name for p in disk.outside("run/checkpoints").iterdir())
        assert kept == ["step-000001", "step-000002", "step-000003"] and not temporaries(disk.outside("run"))

        disk.free()
        disk.read_only()
        before = sorted((p.name, p.stat().st_size) for p in disk.outside("run").rglob("*"))
        read_only = disk.run([*TUNELAB, "train", "--resume", run, "--quiet"])
        assert read_only.returncode == 1 and "Traceback" not in read_only.stderr, read_only.stderr[-2000:]
        assert "read-only file system" in read_only.stderr
        assert sorted((p.name, p.stat().st_size) for p in disk.outside("run").rglob("*")) == before

        disk.read_only(False)
        resumed = disk.run([*TUNELAB, "train", "--resume", run, "--quiet"])
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        expected = load_file(reference / "adapter" / "adapter_model.safetensors")
        actual = load_file(disk.outside("run/adapter/adapter_model.safetensors"))
        assert expected.keys() == actual.keys() and all(torch.equal(actual[k], expected[k]) for k in expected)
        assert disk.outside("run/metrics.csv").read_text() == (reference / "metrics.csv").read_text()


def test_conversion_onto_a_full_or_read_only_disk_leaves_nothing(tmp_path):
    records = [{"instruction": f"Say hello to customer {n}", "input": "", "output": "Hello there. " * 20}
               for n in range(2000)]
    source = tmp_path / "alpaca.json"
    source.write_text(json.dumps(records))
    with SmallDisk(4096) as disk:
        disk.fill(leave_kb=100)
        full = disk.run([*TUNELAB, "data", "convert", source, "--out", disk.inside("chat.jsonl")])
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
        assert f"{disk.inside('chat.jsonl')}: cannot write it" in full.stderr
        assert "no space left on device" in full.stderr.lower()
        assert sorted(p.name for p in disk.outside().iterdir()) == [".ballast"]  # no output, no temporary
        disk.free()
        disk.read_only()
        read_only = disk.run([*TUNELAB, "data", "convert", source, "--out", disk.inside("chat.jsonl")])
        assert read_only.returncode == 1 and "read-only file system" in read_only.stderr, read_only.stderr[-2000:]
        disk.read_only(False)
        done = disk.run([*TUNELAB, "data", "convert", source, "--out", disk.inside("chat.jsonl")])
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(disk.outside("chat.jsonl").read_text().splitlines()) == 2000


def test_an_export_onto_a_full_or_read_only_disk_leaves_nothing_and_succeeds_once_there_is_room(tmp_path, training_data,
                                                                                     tiny_model_dir):
    run = train_here(training_data, tiny_model_dir, tmp_path / "run")
    with SmallDisk(8192) as disk:
        disk.fill(leave_kb=200)
        command = [*TUNELAB, "export", run, "--format", "merged", "--out", disk.inside("merged"),
                   "--verify-prompts", "2"]
        full = disk.run(command)
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
        assert f"{disk.inside('merged')}: cannot write it: no space left on device" in full.stderr
        assert sorted(p.name for p in disk.outside().iterdir()) == [".ballast"]
        disk.free()
        disk.read_only()
        read_only = disk.run(command)
        assert read_only.returncode == 1 and "read-only file system" in read_only.stderr, read_only.stderr[-2000:]
        assert "Traceback" not in read_only.stderr
        disk.read_only(False)
        done = disk.run(command)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (disk.outside("merged") / "config.json").is_file()


def test_the_server_answers_507_on_a_full_disk_pauses_a_job_and_carries_on_once_freed(
        training_data, tiny_model_dir):
    import openai

    with SmallDisk(16384) as disk:
        data_dir = disk.inside("data")
        server = Server(data_dir, "--alias", f"gpt-4o-mini-2024-07-18={tiny_model_dir}", "--dtype", "fp32",
                        prefix=tuple(disk.command([])))
        try:
            client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0,
                                   http_client=httpx.Client(timeout=60))
            training = client.files.create(file=training_data.open("rb"), purpose="fine-tune")
            disk.fill(leave_kb=64)
            with pytest.raises(openai.APIStatusError) as refused:
                client.files.create(file=("big.jsonl", training_data.read_bytes() * 40), purpose="fine-tune")
            assert refused.value.status_code == 507 and refused.value.body["code"] == "insufficient_storage"
            assert "disk is full" in refused.value.body["message"]
            assert [f.id for f in client.files.list().data] == [training.id]
            assert not temporaries(disk.outside("data"))

            disk.free()
            disk.fill(leave_kb=1200)  # the job's settings and a few checkpoints fit, then the disk is full
            job = client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                                 seed=3, hyperparameters={"n_epochs": 12, "batch_size": 4})
            status = _wait_for(client, job.id, ("paused", "succeeded", "failed"))
            events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data]
            assert status == "paused", events
            assert any(m.startswith("Job paused: the server's disk is full") for m in events), events

            disk.free()
            client.fine_tuning.jobs.resume(job.id)
            assert _wait_for(client, job.id, ("succeeded", "failed")) == "succeeded"
            assert client.files.create(file=("again.jsonl", training_data.read_bytes()), purpose="fine-tune")
        finally:
            server.stop()
        disk.read_only()  # (a disk with the database open for writing cannot be remounted read-only)
        for data in ("data", "elsewhere"):  # its database, or a directory it would have to create
            refused_start = disk.run([*TUNELAB, "serve", "--data-dir", disk.inside(data), "--port", "1"])
            assert refused_start.returncode == 1 and "read-only file system" in refused_start.stderr
            assert "Traceback" not in refused_start.stderr
        disk.read_only(False)
        check = disk.run([sys.executable, "-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1])"
                          ".execute('PRAGMA integrity_check').fetchone()[0])", disk.inside("data/tunelab.db")])
        assert check.stdout.strip() == "ok", check.stderr


def _wait_for(client, job_id, statuses, timeout=300):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.fine_tuning.jobs.retrieve(job_id).status
        if status in statuses:
            return status
        time.sleep(0.3)
    raise AssertionError(f"{job_id} still {status} after {timeout} s")
