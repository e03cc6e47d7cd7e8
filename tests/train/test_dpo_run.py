"""`tunelab train --method dpo` on the tests' tiny model: the run's record in OpenAI's shape with the preference
figures, the first loss at ln 2 (the reference is the model as it starts), rewards that separate, exact resume
with the saved reference, `--from` a supervised run (its adapter loaded, and the reference), and the errors
of a run that cannot start.

fp32 where figures are compared exactly, so they mean the same on every CPU; the bf16 path is forced in its
own test (emulated where the CPU has no bf16 units).
"""

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tunelab.core.settings import TrainConfig
from tunelab.runs.record import PREFERENCE_COLUMNS
from tunelab.runs.rundir import RunDir
from tunelab.train.checkpoints import latest_checkpoint
from tunelab.train.local import train


def pair_lines(conversations: list[dict]) -> list[dict]:
    """Each conversation's last reply preferred to the same reply cut after 12 characters."""
    lines = []
    for conversation in conversations:
        messages = conversation["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        reply = messages[last]["content"]
        lines.append({"input": {"messages": messages[:last]},
                      "preferred_output": [{"role": "assistant", "content": reply}],
                      "non_preferred_output": [{"role": "assistant", "content": reply[:12]}]})
    return lines


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, support_conversations):
    folder = tmp_path_factory.mktemp("pairs")
    files = []
    for name, part in (("pairs.jsonl", support_conversations[:16]), ("valid_pairs.jsonl", support_conversations[16:24]),
                       ("chat.jsonl", support_conversations[:16])):
        lines = part if name == "chat.jsonl" else pair_lines(part)
        (folder / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
        files.append(folder / name)
    return files


def dpo_settings(pair_files, model_dir, out, **changes) -> TrainConfig:
    base = dict(data=str(pair_files[0]), validation=str(pair_files[1]), model=str(model_dir), out=str(out),
                method="dpo", n_epochs=3, batch_size=4, learning_rate_multiplier=20, seed=3, dtype="fp32")
    return TrainConfig(**dict(base, **changes))


def rows(run_dir) -> list[dict]:
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, pair_files, tiny_model_dir):
    return train(dpo_settings(pair_files, tiny_model_dir, tmp_path_factory.mktemp("dpo") / "run"))


def test_a_dpo_run_starts_at_ln2_separates_the_rewards_and_records_them(dpo_run):
    recorded = rows(dpo_run)
    assert list(recorded[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
                                 *PREFERENCE_COLUMNS]
    assert len(recorded) == 12  # 16 pairs, batch 4, 3 epochs
    first, last = recorded[0], recorded[-1]
    # The first step's policy is the reference (a fresh adapter changes nothing): loss ln 2, no reward.
    assert float(first["train_loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(first["train_reward_margin"]) == pytest.approx(0, abs=1e-6)
    assert float(last["train_loss"]) < 0.6 and float(last["train_reward_accuracy"]) >= 0.75
    assert float(last["valid_reward_accuracy"]) >= 0.75 and float(last["valid_reward_margin"]) > 0
    assert float(last["valid_loss"]) < math.log(2)

    job = json.loads((dpo_run / "job.json").read_text())
    assert job["status"] == "succeeded" and job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"] == {"n_epochs": 3, "batch_size": 4,
                                                       "learning_rate_multiplier": 20.0, "beta": 0.1}
    metrics = [e["data"] for e in RunDir(dpo_run).events() if e.get("type") == "metrics"]
    assert metrics[-1]["train_reward_accuracy"] == pytest.approx(float(last["train_reward_accuracy"]))
    assert "valid_reward_accuracy" in metrics[-1] and "train_mean_token_accuracy" in metrics[-1]
    reference = load_file(RunDir(dpo_run).reference_file)["log_probs"]
    assert reference.shape == (24, 2) and bool((reference[:, 0] < reference[:, 1]).all())  # longer: less likely
    assert (dpo_run / "adapter" / "adapter_model.safetensors").is_file()


def test_a_dpo_run_resumes_to_the_uninterrupted_result(tmp_path, pair_files, tiny_model_dir, dpo_run):
    config = dpo_settings(pair_files, tiny_model_dir, tmp_path / "resumed")
    stopped = train(config, should_stop=lambda step: step == 6)
    assert latest_checkpoint(RunDir(stopped).checkpoints_dir).step == 4
    resumed = train(config, resume=True)
    assert (resumed / "metrics.csv").read_text() == (dpo_run / "metrics.csv").read_text()
    expected = load_file(dpo_run / "adapter" / "adapter_model.safetensors")
    for name, tensor in load_file(resumed / "adapter" / "adapter_model.safetensors").items():
        assert torch.equal(tensor, expected[name]), name


def test_rpo_adds_the_preferred_replies_loss_and_raises_their_own_likelihood(tmp_path, pair_files, tiny_model_dir,
                                                                            dpo_run):
    rpo = train(dpo_settings(pair_files, tiny_model_dir, tmp_path / "rpo", rpo_alpha=1.0))
    plain, with_rpo = rows(dpo_run), rows(rpo)
    # The first step adds the preferred replies' mean token loss under the reference (several nats on the tiny
    # model) to ln 2; the rewards start at zero as before.
    assert float(with_rpo[0]["train_loss"]) > math.log(2) + 1
    assert float(with_rpo[0]["train_reward_margin"]) == pytest.approx(0, abs=1e-6)
    # The preferred replies themselves become likelier than under plain DPO, which may win by lowering the other.
    assert float(with_rpo[-1]["train_rewards_chosen"]) > float(plain[-1]["train_rewards_chosen"])
    assert float(with_rpo[-1]["train_reward_accuracy"]) >= 0.75


def test_simpo_trains_without_a_reference(tmp_path, pair_files, tiny_model_dir):
    """Reference-free: no reference pass and no reference file; β auto is SimPO's 2; the loss is SimPO's from
    the first step (not ln 2) and falls as the rewards separate."""
    import torch.nn.functional as F

    # The short reply starts with the higher average log-probability on the tiny model: SimPO must turn that
    # round, which takes a higher rate than the sum-based losses need here.
    run_dir = train(dpo_settings(pair_files, tiny_model_dir, tmp_path / "simpo", dpo_loss="simpo",
                                 learning_rate_multiplier=100))
    assert not RunDir(run_dir).reference_file.exists()
    assert not any("Reference log-probabilities" in e["message"] for e in RunDir(run_dir).events())
    job = json.loads((run_dir / "job.json").read_text())
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 2.0
    recorded = rows(run_dir)
    first = recorded[0]
    # The first loss from the first rewards (β · average log-probability), as SimPO defines it: γ = 0.5.
    margin = torch.tensor(float(first["train_reward_margin"]), dtype=torch.float64)
    assert abs(float(first["train_loss"]) - math.log(2)) > 1e-3
    assert float(first["train_reward_margin"]) != 0
    assert float(recorded[-1]["train_loss"]) < float(first["train_loss"])
    assert float(recorded[-1]["train_reward_accuracy"]) >= 0.75
    # One pair's loss is −log σ(margin − γ); a batch's mean loss is at least that of its mean margin (convexity).
    assert float(first["train_loss"]) >= float(-F.logsigmoid(margin - 0.5)) - 1e-6


def test_dpo_from_a_supervised_run_starts_at_its_adapter_and_takes_it_as_the_reference(tmp_path, pair_files,
                                                                                       tiny_model_dir):
    supervised = train(TrainConfig(data=str(pair_files[2]), model=str(tiny_model_dir), out=str(tmp_path / "sft"),
                                   n_epochs=2, batch_size=4, learning_rate_multiplier=20, seed=3, dtype="fp32",
                                   lora_r=4, target_modules="q_proj,v_proj"))
    continued = train(dpo_settings(pair_files, tiny_model_dir, tmp_path / "dpo", from_run=str(supervised),
                                   n_epochs=1, validation=None))
    settings = RunDir(continued).settings()
    assert (settings["lora_r"], settings["target_modules"], settings["model"]) == (4, "q_proj,v_proj",
                                                                                   str(tiny_model_dir))
    assert settings["from_run"] == str(supervised.resolve())
    first = rows(continued)[0]
    # The reference is the supervised adapter: the first step starts at ln 2 from there, not from the base.
    assert float(first["train_loss"]) == pytest.approx(math.log(2), abs=1e-6)
    started, trained = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (supervised, continued))
    assert started.keys() == trained.keys()
    moved = [name for name in started if not torch.equal(started[name], trained[name])]
    assert moved and max((trained[n] - started[n]).norm() / started[n].norm() for n in moved) < 0.5

    refused = CliRunner().invoke(_app(), ["train", "--method", "dpo", "--data", str(pair_files[0]), "--from",
                                          str(supervised), "--lora-r", "8", "--out", str(tmp_path / "x")])
    assert refused.exit_code == 1 and "lora_r is the run's (4), not 8; drop --lora-r" in refused.output


def test_runs_that_cannot_start_say_why(tmp_path, pair_files, tiny_model_dir):
    runner = CliRunner()
    chat_as_pairs = runner.invoke(_app(), ["train", "--method", "dpo", "--data", str(pair_files[2]), "--model",
                                           str(tiny_model_dir), "--out", str(tmp_path / "a")])
    assert chat_as_pairs.exit_code == 1 and "chat.jsonl:1" in chat_as_pairs.output
    assert "holds chat examples (messages), not preference pairs" in chat_as_pairs.output
    pairs_as_chat = runner.invoke(_app(), ["train", "--data", str(pair_files[0]), "--model", str(tiny_model_dir),
                                           "--out", str(tmp_path / "b")])
    assert pairs_as_chat.exit_code == 1 and "holds preference pairs" in pairs_as_chat.output and "--method dpo" in pairs_as_chat.output
    unfinished = runner.invoke(_app(), ["train", "--method", "dpo", "--data", str(pair_files[0]), "--from",
                                        str(tmp_path / "nothing-here")])
    assert unfinished.exit_code == 1 and "not a finished run" in unfinished.output
    old_spelling = runner.invoke(_app(), ["train", "--method", "qlora", "--data", str(pair_files[2]), "--model",
                                          str(tiny_model_dir), "--out", str(tmp_path / "c")])
    assert "`adapter: qlora`" in old_spelling.output  # the note, then qlora's own refusal on a CPU
    assert old_spelling.exit_code == 1 and "CUDA" in old_spelling.output


@pytest.mark.slow
def test_a_dpo_run_in_bf16_leaves_ln2_in_the_direction_of_the_preference(tmp_path, pair_files, tiny_model_dir):
    """bf16 forced (emulated without bf16 units): the reference and the first step agree to bf16's rounding."""
    run_dir = train(dpo_settings(pair_files, tiny_model_dir, tmp_path / "bf16", dtype="bf16", validation=None))
    recorded = rows(run_dir)
    assert float(recorded[0]["train_loss"]) == pytest.approx(math.log(2), abs=0.01)
    assert float(recorded[-1]["train_loss"]) < 0.6 and float(recorded[-1]["train_reward_accuracy"]) >= 0.75


def _app():
    from tunelab.cli.app import app

    return app
