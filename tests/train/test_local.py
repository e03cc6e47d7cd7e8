"""The training recipe on a tiny model: loss goes down, the run directory stands alone, errors are clear."""

import csv
import json

import pytest

from tunelab.conversation.problems import DataError
from tunelab.core.settings import TrainConfig, default_n_epochs
from tunelab.train.local import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, support_conversations):
    data_dir = tmp_path_factory.mktemp("data")
    train_file, valid_file = data_dir / "train.jsonl", data_dir / "valid.jsonl"
    train_file.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:24]))
    valid_file.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[24:32]))
    config = TrainConfig(data=str(train_file), validation=str(valid_file), model=str(tiny_model_dir),
                         out=str(data_dir / "run"), n_epochs=4, batch_size=4, learning_rate_multiplier=25,
                         suffix="tiny", seed=7)
    return train(config)


def test_loss_goes_down(tiny_run):
    rows = list(csv.DictReader((tiny_run / "metrics.csv").open()))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert len(rows) == 24  # 24 examples / batch 4 × 4 epochs
    first_epoch = sum(float(r["train_loss"]) for r in rows[:6]) / 6
    last_epoch = sum(float(r["train_loss"]) for r in rows[-6:]) / 6
    assert last_epoch < first_epoch * 0.9, (first_epoch, last_epoch)
    valid = [float(r["valid_loss"]) for r in rows if r["valid_loss"]]
    assert len(valid) >= 2 and valid[-1] < valid[0]


def test_run_directory_is_self_contained(tiny_run):
    for name in ["config.yaml", "job.json", "metrics.csv", "events.jsonl", "loss_curve.png",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "tokenizer/tokenizer.json", "tokenizer/chat_template.jinja"]:
        assert (tiny_run / name).is_file(), name
    assert not list(tiny_run.glob("adapter/*.bin"))  # safetensors only
    job = json.loads((tiny_run / "job.json").read_text())
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["fine_tuned_model"].startswith("ft:") and ":tiny:" in job["fine_tuned_model"]
    assert job["hyperparameters"] == {"n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 25.0}
    assert job["trained_tokens"] > 0
    events = [json.loads(line) for line in (tiny_run / "events.jsonl").read_text().splitlines()]
    assert all(e["object"] == "fine_tuning.job.event" for e in events)
    assert sum(e["type"] == "metrics" for e in events) == 24
    assert any("model_load_seconds" in e["data"] for e in events)


def test_bad_data_names_file_line_and_field(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "robot", "content": "hi"}]}\n'
                   "not json\n")
    with pytest.raises(DataError) as caught:
        train(TrainConfig(data=str(bad), model=str(tiny_model_dir), out=str(tmp_path / "run")))
    text = str(caught.value)
    assert f"{bad}:2: messages[0].role: unrecognised role 'robot'" in text
    assert f"{bad}:2: messages: no assistant message" in text
    assert f"{bad}:3: line: not valid JSON" in text
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_openai_default_epochs_rule():
    assert default_n_epochs(160) == 3
    assert default_n_epochs(10) == 10  # 10 × 10 reaches the 100-example minimum
    assert default_n_epochs(30) == 3  # 100 // 30, as OpenAI's checker computes it
    assert default_n_epochs(3) == 25  # capped
    assert default_n_epochs(20_000) == 1


def test_schedule_weight_decay_and_clipping_reach_the_optimizer(tmp_path, tiny_model_dir, support_conversations):
    from tunelab.runs.rundir import RunDir
    from tunelab.train.checkpoints import latest_checkpoint

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:16]))
    run = RunDir(train(TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "run"), n_epochs=1,
                                   batch_size=4, dtype="fp32", lr_scheduler="constant", warmup_ratio=0.5,
                                   weight_decay=0.1, max_grad_norm=0.0)))
    state = latest_checkpoint(run.checkpoints_dir).state
    group = state["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0.1
    # 4 steps, 2 of warmup, then constant: the factors were 0.5, 1, 1, 1; after the last step, 1.
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(group["initial_lr"])
    recorded = run.settings()
    assert (recorded["lr_scheduler"], recorded["warmup_ratio"], recorded["max_grad_norm"]) == ("constant", 0.5, 0.0)


def test_a_run_without_matplotlib_succeeds_and_says_it_drew_no_loss_curve(tmp_path, tiny_model_dir,
                                                                         support_conversations, monkeypatch):
    import json
    import sys

    from tunelab.core.settings import TrainConfig
    from tunelab.train.local import train

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as where it is not installed: importing it fails
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:8]))
    run = train(TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "run"), n_epochs=1,
                            dtype="fp32"))
    assert json.loads((run / "job.json").read_text())["status"] == "succeeded"
    warnings = [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
                if "No loss curve picture" in e["message"]]
    assert len(warnings) == 1 and warnings[0]["level"] == "warn"


def test_the_loss_curve_is_drawn_again_during_a_run_at_most_every_half_minute(tmp_path, monkeypatch):
    from tunelab.runs import record
    from tunelab.runs.rundir import RunDir

    recorder = record.RunRecorder(RunDir(tmp_path / "run"), {"id": "ftjob-test"})
    recorder.rows = [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5}]
    picture = recorder.run.loss_curve_file
    assert recorder.refresh_loss_curve() == picture and picture.is_file()  # the first checkpoint draws it
    picture.unlink()
    assert recorder.refresh_loss_curve() is None and not picture.exists()  # a checkpoint a step later does not
    monkeypatch.setattr(record, "REDRAW_SECONDS", 0)
    assert recorder.refresh_loss_curve() == picture  # once the time has passed, it does
    monkeypatch.setattr(record, "REDRAW_SECONDS", 30)
    picture.unlink()
    assert recorder.plot_loss_curve() == picture  # the run's end always draws it
    recorder.close()
