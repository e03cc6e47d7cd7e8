"""OpenAI's `integrations` through the official SDK: a job with a W&B integration trains to `succeeded`,
reports to W&B (offline here: this machine has no W&B key, and the job's events say so), and leaves a run
folder whose metrics W&B's own records give back; trackers named in tunelab's extension too."""

import csv
import io

import openai
import pytest

from tests.server.conftest import upload
from tests.server.test_jobs import wait_until_finished
from tests.tracking.wandb_files import history

pytestmark = pytest.mark.slow


def test_a_wandb_integration_job_succeeds_and_logs_offline(tiny_client, tiny_server, tmp_path, support_conversations):
    client = tiny_client
    training = upload(client, tmp_path, support_conversations[:12])
    job = client.fine_tuning.jobs.create(
        training_file=training.id, model="gpt-4o-mini-2024-07-18", hyperparameters={"n_epochs": 1, "batch_size": 4},
        integrations=[{"type": "wandb", "wandb": {"project": "support-bot", "tags": ["first"]}}],
        extra_body={"tunelab": {"report_to": "tensorboard"}})
    assert job.integrations[0].type == "wandb" and job.integrations[0].wandb.project == "support-bot"
    done = wait_until_finished(client, job.id)
    assert done.status == "succeeded", done.error
    said = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data
            if e.message.startswith("Reporting to")]
    assert any("Weights & Biases: offline (no W&B API key on this machine)" in m and "wandb sync" in m for m in said)
    assert any(m.startswith("Reporting to TensorBoard") for m in said), said
    results = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).read().decode())))
    run = tiny_server.data_dir / "runs" / job.id
    [folder] = (run / "wandb").glob("offline-run-*")
    logged = [row for row in history(folder) if "train_loss" in row]
    assert [(row["_step"], round(row["train_loss"], 6)) for row in logged] == \
        [(int(r["step"]), float(r["train_loss"])) for r in results]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_an_mlflow_path_on_the_server_disk_is_refused(tiny_client, tmp_path, support_conversations):
    training = upload(tiny_client, tmp_path, support_conversations[:12])
    with pytest.raises(openai.BadRequestError) as refused:
        tiny_client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                            extra_body={"tunelab": {"report_to": "mlflow",
                                                                    "mlflow_tracking_uri": "/etc"}})
    assert refused.value.body["param"] == "tunelab.mlflow_tracking_uri"
    with pytest.raises(openai.BadRequestError, match="report_to: comet is not a tracker"):
        tiny_client.fine_tuning.jobs.create(training_file=training.id, model="gpt-4o-mini-2024-07-18",
                                            extra_body={"tunelab": {"report_to": "comet"}})
