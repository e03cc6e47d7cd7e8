"""A run reports to the trackers teams use, read back with each tracker's own reader: a real MLflow
tracking server (its SQLite backend) through MlflowClient, TensorBoard's event files through TensorBoard's
reader, an offline W&B run through W&B's records. A tracker that fails — one that cannot start, a server
killed mid-run — is a warning event, never a failed run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.serving import free_port
from tests.tracking.wandb_files import history, run_config
from tunelab.core.settings import TrainConfig

pytestmark = pytest.mark.slow


def start_mlflow(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                                f"sqlite:///{folder / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{uri}/health", timeout=1).status_code == 200:
                return process, uri
        except httpx.TransportError:
            time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("the MLflow server did not start")


@pytest.fixture()
def training_data(tmp_path, support_conversations):
    train_file, valid_file = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train_file.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:16]))
    valid_file.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[16:24]))
    return train_file, valid_file


def train(training_data, model_dir, out, **changes) -> Path:
    from tunelab.train.local import train as run

    return run(TrainConfig(**dict(data=str(training_data[0]), validation=str(training_data[1]), model=str(model_dir),
                                  out=str(out), n_epochs=1, batch_size=4, seed=3, dtype="fp32"), **changes))


def metrics_csv(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_a_run_reports_to_an_mlflow_server_and_tensorboard_and_goes_on_when_the_server_dies(
        training_data, tiny_model_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    process, mlflow_server = start_mlflow(tmp_path)
    try:
        reported_and_read_back(training_data, tiny_model_dir, tmp_path, mlflow_server, MlflowClient, EventAccumulator)
        # Then the server is killed (SIGKILL) at the second step of another run: a warning, and the run goes on.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")

        def kill_at_step_two(step: int) -> bool:
            if step == 2 and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
            return False

        from tunelab.train.local import train as run_training

        run = run_training(TrainConfig(data=str(training_data[0]), model=str(tiny_model_dir), out=str(tmp_path / "cut"),
                                       n_epochs=1, batch_size=4, seed=3, dtype="fp32", report_to="mlflow",
                                       mlflow_tracking_uri=mlflow_server), should_stop=kill_at_step_two)
        assert json.loads((run / "job.json").read_text())["status"] == "succeeded"
        assert len(metrics_csv(run)) == 4  # every step trained and recorded
        warnings = [e["message"] for e in events(run) if e["level"] == "warn"]
        assert len(warnings) == 1 and warnings[0].startswith("MLflow failed and is left out from now on"), warnings
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def reported_and_read_back(training_data, tiny_model_dir, tmp_path, mlflow_server, MlflowClient, EventAccumulator):
    run = train(training_data, tiny_model_dir, tmp_path / "run", report_to="mlflow,tensorboard",
                mlflow_tracking_uri=mlflow_server, mlflow_experiment="support-bot")
    job, rows = json.loads((run / "job.json").read_text()), metrics_csv(run)
    assert job["status"] == "succeeded" and len(rows) == 4
    said = [e["message"] for e in events(run) if e["message"].startswith("Reporting to")]
    assert len(said) == 2 and f"at {mlflow_server}" in said[0] and "tensorboard" in said[1]

    client = MlflowClient(mlflow_server)  # the server, read back through MLflow's own client
    experiment = client.get_experiment_by_name("support-bot")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.data.tags["tunelab.job_id"] == job["id"] and found.info.status == "FINISHED"
    assert found.data.tags["fine_tuned_model"] == job["fine_tuned_model"]
    assert found.data.params["lora_r"] == "16" and found.data.params["n_epochs"] == "1"
    logged = client.get_metric_history(found.info.run_id, "train_loss")
    assert [(m.step, round(m.value, 6)) for m in logged] == [(int(r["step"]), float(r["train_loss"])) for r in rows]
    validated = client.get_metric_history(found.info.run_id, "valid_loss")
    assert [m.step for m in validated] == [int(r["step"]) for r in rows if r["valid_loss"]]

    board = EventAccumulator(str(run / "tensorboard"))  # TensorBoard's own reader
    board.Reload()
    scalars = board.Scalars("train_loss")
    assert [s.step for s in scalars] == [int(r["step"]) for r in rows]
    assert [s.value for s in scalars] == pytest.approx([float(r["train_loss"]) for r in rows], rel=1e-5)
    assert "train_mean_token_accuracy" in board.Tags()["scalars"]


def test_offline_wandb_and_a_tracker_that_fails_never_fail_the_run(training_data, tiny_model_dir, tmp_path,
                                                                    monkeypatch):
    # W&B offline (no key here); MLflow at a port nothing listens on, asked once, briefly.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    run = train(training_data, tiny_model_dir, tmp_path / "run", report_to="wandb,mlflow",
                mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", wandb_project="support", wandb_tags="a,b")
    assert json.loads((run / "job.json").read_text())["status"] == "succeeded"
    warnings = [e["message"] for e in events(run) if e["level"] == "warn"]
    assert any(w.startswith("Not reporting to mlflow: it failed to start") for w in warnings), warnings
    said = [e["message"] for e in events(run) if e["message"].startswith("Reporting to Weights & Biases")]
    assert said and "offline (WANDB_MODE=offline)" in said[0] and "wandb sync" in said[0]
    [folder] = (run / "wandb").glob("offline-run-*")
    logged = [row for row in history(folder) if "train_loss" in row]
    assert [(row["_step"], round(row["train_loss"], 6)) for row in logged] == \
        [(int(r["step"]), float(r["train_loss"])) for r in metrics_csv(run)]
    assert run_config(folder)["lora_r"] == 16
