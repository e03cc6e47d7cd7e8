"""A job's settings beyond OpenAI's hyperparameters: the `tunelab` extension the official SDK sends through
`extra_body`, and the preset the server was started with for a base model (server/job_settings.py)."""

import openai
import pytest
import yaml

from tests.conftest import run_cli
from tests.server.conftest import API_KEY, Server, upload
from tests.server.test_jobs import wait_until_finished

BASE = "gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def preset_server(tmp_path_factory, tiny_model_dir):
    """The tiny model under BASE with a server preset of its own, and a copy of it as `other` without one
    (a preset belongs to a base model, whatever name a request uses for it)."""
    import shutil

    folder = tmp_path_factory.mktemp("preset")
    shutil.copytree(tiny_model_dir, folder / "tiny-copy")
    # `method: lora`: the spelling before `adapter`, still taken
    (folder / "small-jobs.yaml").write_text("method: lora\nlora_r: 4\nlora_alpha: 8\nmax_length: 256\n"
                                            "micro_batch_size: 1\nn_epochs: 2\n")
    running = Server(folder / "data", "--alias", f"{BASE}={tiny_model_dir}", "--alias", f"other={folder / 'tiny-copy'}",
                     "--dtype", "fp32", "--max-jobs", "2",
                     "--job-preset", f"{BASE}={folder / 'small-jobs.yaml'}")
    running.data_dir = folder / "data"
    yield running
    running.stop()


def _client(server, recorder):
    import httpx2 as httpx

    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0,
                         http_client=httpx.Client(event_hooks={"response": [recorder] if recorder else []}))


def _run_config(server_data, job_id) -> dict:
    return yaml.safe_load((server_data / "runs" / job_id / "config.yaml").read_text())


def test_the_extension_sets_what_the_job_trains_with_and_the_server_preset_fills_the_rest(
        preset_server, recorder, tmp_path, support_conversations):
    client = _client(preset_server, recorder)
    training = upload(client, tmp_path, support_conversations[:12])
    data_dir = preset_server.data_dir

    chosen = client.fine_tuning.jobs.create(
        training_file=training.id, model=BASE, hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body={"tunelab": {"adapter": "dora", "lora_r": 2, "micro_batch_size": 2,
                                "gradient_checkpointing": True}})
    plain = client.fine_tuning.jobs.create(training_file=training.id, model=BASE, hyperparameters={"batch_size": 2})
    other_base = client.fine_tuning.jobs.create(training_file=training.id, model="other",
                                                hyperparameters={"n_epochs": 1})
    assert chosen.to_dict()["tunelab"] == {"preset": str(data_dir.parent / "small-jobs.yaml"), "adapter": "dora",
                                           "lora_r": 2, "lora_alpha": 8, "max_length": 256, "micro_batch_size": 2,
                                           "gradient_checkpointing": True}
    # A base with no server preset: TrainConfig's defaults (seen in the job object; it need not train).
    assert client.fine_tuning.jobs.cancel(other_base.id).to_dict()["tunelab"] == {"preset": None}
    for job in (chosen, plain):
        assert wait_until_finished(client, job.id).status == "succeeded"

    applied = _run_config(data_dir, chosen.id)
    assert (applied["adapter"], applied["lora_r"], applied["micro_batch_size"], applied["gradient_checkpointing"]) \
        == ("dora", 2, 2, True)
    assert (applied["n_epochs"], applied["batch_size"], applied["max_length"]) == (1, 4, 256)  # request, then preset
    plan = [e.message for e in client.fine_tuning.jobs.list_events(chosen.id, limit=100).data
            if e.message.startswith("Memory plan: ")]  # among the job's first events
    assert plan and "dora, micro-batch 2, gradient checkpointing on" in plan[0], plan
    adapter = (data_dir / "runs" / chosen.id / "adapter" / "adapter_config.json").read_text()
    assert '"r": 2' in adapter and '"use_dora": true' in adapter

    preset = _run_config(data_dir, plain.id)
    assert (preset["adapter"], preset["lora_r"], preset["lora_alpha"], preset["max_length"], preset["micro_batch_size"]) \
        == ("lora", 4, 8, 256, 1)
    assert (preset["n_epochs"], preset["batch_size"]) == (2, 2)  # the preset's epochs; the request's batch
    assert client.fine_tuning.jobs.retrieve(plain.id).hyperparameters.n_epochs == 2
    events = [e.message for e in client.fine_tuning.jobs.list_events(plain.id, limit=100).data]
    assert any(m.startswith("Settings: preset ") and "lora_r 4" in m for m in events), events

    recorder.check_all()


@pytest.mark.parametrize("extension, message", [
    ({"n_epochs": 2}, "tunelab.n_epochs: set it in hyperparameters, OpenAI's own field"),
    ({"out": "/etc"}, "tunelab.out: not a setting a job can take"),
    ({"chat_template": "/etc/passwd"}, "tunelab.chat_template: not a setting a job can take"),
    ({"lora_r": 0}, "tunelab.lora_r: must be a whole number ≥ 1"),
    ({"adapter": "magic"}, "tunelab.adapter: must be one of lora, dora, qlora, full"),
    ({"method": "dpo"}, "tunelab.method: not a setting a job can take"),  # OpenAI's method.type says it
    ({"preset": "nope"}, "tunelab.preset: no preset named 'nope'"),
    ({"validation_split": 0.2}, "validation_split: cannot be used together with a validation file"),
    ("qlora", "tunelab: must be an object of training settings"),
])
def test_a_bad_extension_is_refused_naming_the_setting(preset_server, recorder, tmp_path, support_conversations,
                                                       extension, message):
    client = _client(preset_server, recorder)
    training = upload(client, tmp_path, support_conversations[:12])
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(training_file=training.id, model=BASE, validation_file=training.id,
                                       extra_body={"tunelab": extension})
    assert message in refused.value.body["message"]
    assert refused.value.body["param"].startswith("tunelab")


def test_a_server_preset_for_an_unknown_base_or_a_bad_file_is_refused_at_start(tmp_path):
    (tmp_path / "bad.yaml").write_text("lora_r: many\n")
    for preset, message in ((f"gpt-5={tmp_path / 'bad.yaml'}", "the server answers to no base model 'gpt-5'"),
                            (f"default={tmp_path / 'bad.yaml'}", "lora_r"),
                            ("default=nope", "no preset named 'nope'"),
                            (f"default={tmp_path / 'missing.yaml'}", "missing.yaml")):
        result = run_cli("serve", "--data-dir", str(tmp_path / "data"), "--job-preset", preset)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr.decode(), result.stderr


def test_a_job_that_cannot_fit_fails_saying_what_it_needs(tmp_path, tiny_model_dir, support_conversations):
    server = Server(tmp_path / "data", "--alias", f"{BASE}={tiny_model_dir}", env={"TUNELAB_MEMORY": "1MB"})
    try:
        client = _client(server, None)
        training = upload(client, tmp_path, support_conversations[:12])
        job = wait_until_finished(client, client.fine_tuning.jobs.create(training_file=training.id, model=BASE).id)
    finally:
        server.stop()
    assert job.status == "failed" and job.error.code == "insufficient_memory", job.error
    assert "does not fit in 0.0 GiB even at micro-batch 1 with gradient checkpointing: it needs" in job.error.message
