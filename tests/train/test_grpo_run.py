"""`tunelab train --method grpo`: a reinforcement run on the tests' tiny model, continued from a supervised run
(so its samples are words, not noise), graded by OpenAI's graders: the reward rises, the run records OpenAI's
job shape and GRPO's figures, and a run stopped mid-way resumes to exactly the uninterrupted result."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.conftest import read_jsonl, train_tiny_run
from tunelab.core.settings import TrainConfig
from tunelab.train.local import train
from tunelab.train.reinforcement import group_advantages, policy_loss

pytestmark = pytest.mark.slow

# A reward with spread in every group, even for the tiny model's half-words: how close the reply is to the
# conversation's own reply.
GRADER = {"type": "text_similarity", "name": "like_the_reply", "input": "{{sample.output_text}}",
          "reference": "{{item.reference}}", "evaluation_metric": "fuzzy_match"}


@pytest.fixture(scope="module")
def supervised(tmp_path_factory, support_conversations):
    """A supervised tiny run to continue from, and 16 tasks: the shortest conversations' prompts, each with its
    reply as the item's reference."""
    folder = tmp_path_factory.mktemp("grpo")
    run = train_tiny_run(folder, support_conversations, n_epochs=1, learning_rate_multiplier=10)
    shortest = sorted(support_conversations, key=lambda c: len(json.dumps(c["messages"][:-1])))[:16]
    tasks = [{"messages": c["messages"][:-1], "reference": c["messages"][-1]["content"][:60]} for c in shortest]
    (folder / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    (folder / "grader.json").write_text(json.dumps(GRADER))
    return folder, run


def grpo(folder, run, out, **settings) -> TrainConfig:
    chosen = dict(data=str(folder / "tasks.jsonl"), model=str(folder / "model"), from_run=str(run), out=str(out),
                  method="grpo", grader=str(folder / "grader.json"), batch_size=4, group_size=4, n_epochs=1,
                  max_completion_tokens=16, dtype="fp32", validation_split=0.25, learning_rate_multiplier=50)
    return TrainConfig(**(chosen | settings))


def rows(run) -> list[dict]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_a_grpo_run_records_openais_shape_and_grpos_figures(supervised, tmp_path):
    folder, run = supervised
    done = train(grpo(folder, run, tmp_path / "run", eval_every=2))
    figures = rows(done)
    assert len(figures) == 3  # 12 training prompts (4 held out) in batches of 4
    first, last = figures[0], figures[-1]
    # The reference is the run it continues: at the first step the policy is the reference.
    assert float(first["train_kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(last["train_kl"]) > 0
    assert all(0 <= float(r["train_reward_mean"]) <= 1 for r in figures)
    assert all(float(r["train_frac_reward_zero_std"]) < 1 for r in figures)  # the grader tells replies apart
    assert all(1 <= float(r["train_completion_tokens"]) <= 16 for r in figures)
    assert int(float(first["sampled_tokens"])) == round(float(first["train_completion_tokens"]) * 16)
    assert [r["valid_reward_mean"] != "" for r in figures] == [False, True, True]  # every 2 steps, and the last
    job = json.loads((done / "job.json").read_text())
    assert job["status"] == "succeeded" and job["method"]["type"] == "reinforcement"
    assert job["method"]["reinforcement"]["grader"] == GRADER
    assert job["method"]["reinforcement"]["hyperparameters"]["compute_multiplier"] == 0.5  # 4 of the usual 8
    assert json.loads((done / "grader.json").read_text()) == GRADER
    events = [e for e in read_jsonl(done / "events.jsonl") if e.get("type") == "metrics"]
    assert "mean reward=" in events[-1]["message"] and "train_reward_mean" in events[-1]["data"]
    assert (done / "loss_curve.png").stat().st_size > 10_000  # the loss and the reward, side by side
    assert (done / "adapter" / "adapter_model.safetensors").is_file()


def test_one_step_makes_the_rewarded_replies_likelier_and_the_others_less_likely(supervised, tmp_path):
    """The step's own replies, drawn again from the start with the step's seed and graded: after the step, each
    reply's log-probability has moved with its advantage."""
    from tunelab.conversation.reader import read_numbered_tasks
    from tunelab.conversation.templates import stop_token_ids
    from tunelab.graders.grade import Grading
    from tunelab.graders.templates import Sample
    from tunelab.models.generate import finished_reply, load_for_generation, sample_tokens
    from tunelab.train.batches import collate, epoch_batches
    from tunelab.train.reinforcement import render_tasks, sampled_sequence, token_log_probs

    folder, run = supervised
    config = grpo(folder, run, tmp_path / "one", batch_size=16, validation_split=0.0, kl_beta=0.0, warmup_ratio=0.0)
    stepped = train(config)
    before, after = (load_for_generation(str(r), device="cpu", dtype=torch.float32) for r in (run, stepped))
    tokenizer = before.tokenizer
    tasks = render_tasks(tokenizer, read_numbered_tasks(folder / "tasks.jsonl"))
    tasks = [tasks[i] for i in epoch_batches([len(t.prompt_ids) for t in tasks], 16, config.seed, 0)[0]]
    stop = stop_token_ids(tokenizer, None)
    replies = sample_tokens(before.model, [t.prompt_ids for t in tasks for _ in range(4)], stop,
                            tokenizer.pad_token_id, 16, 1.0, seed=config.seed * 1_000_003)
    samples = [Sample(finished_reply(tokenizer, reply, stop, 0).text) for reply in replies]
    rewards = torch.tensor([g.reward for g in Grading(GRADER).grade(samples, [t.item for t in tasks for _ in range(4)])])
    advantages, _ = group_advantages(rewards, 4)

    def log_probs(model) -> torch.Tensor:
        sequences = [sampled_sequence(tasks[i // 4].prompt_ids, reply) for i, reply in enumerate(replies)]
        with torch.no_grad():
            per_token, rows_of = token_log_probs(model, *collate(sequences, tokenizer.pad_token_id, "cpu"))
        return torch.zeros(len(sequences)).index_add(0, rows_of, per_token)

    change = log_probs(after.model) - log_probs(before.model)
    assert float(torch.corrcoef(torch.stack([advantages, change]))[0, 1]) > 0.8
    assert change[advantages > 0].mean() > 0 > change[advantages < 0].mean()


def test_a_stopped_grpo_run_resumes_to_the_uninterrupted_result(supervised, tmp_path):
    """The replies of each step are drawn from a generator seeded by the step: resumed from its checkpoint, a
    run samples, grades and steps exactly as the run that was never stopped."""
    from safetensors.torch import load_file

    folder, run = supervised
    whole = train(grpo(folder, run, tmp_path / "whole", checkpoint_every=1))
    assert len(rows(whole)) == 3
    config = grpo(folder, run, tmp_path / "stopped", checkpoint_every=1)
    train(config, should_stop=lambda step: step == 2)  # stops after step 2, checkpointed
    assert json.loads((tmp_path / "stopped" / "job.json").read_text())["status"] == "paused"
    resumed = train(config, resume=True)
    assert [r["train_reward_mean"] for r in rows(resumed)] == [r["train_reward_mean"] for r in rows(whole)]
    assert [r["train_loss"] for r in rows(resumed)] == [r["train_loss"] for r in rows(whole)]
    a, b = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_grpo_run_needs_tasks_and_a_grader_that_fit(supervised, tmp_path):
    from tunelab.conversation.problems import DataError
    from tunelab.graders.spec import GraderSpecError

    folder, run = supervised
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**GRADER, "operation": "equals"}))
    with pytest.raises(GraderSpecError, match=r"bad.json: grader.operation"):
        train(grpo(folder, run, tmp_path / "a", grader=str(bad)))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl:1: messages: holds chat examples .* \[chat_file\]"):
        train(grpo(folder, run, tmp_path / "b", data=str(chat)))
    with pytest.raises(ValueError, match="grader: a grpo run needs a grader"):
        TrainConfig(data="x.jsonl", method="grpo")


def test_group_advantages_and_the_policy_loss_are_grpos():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    advantages, zero_spread = group_advantages(rewards, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    assert torch.allclose(advantages[:4], (torch.tensor([1.0, 0.0, 0.0, 1.0]) - 0.5) / (std + 1e-4))
    assert torch.equal(advantages[4:], torch.zeros(4)) and zero_spread == 0.5
    # One step per batch of samples: ratio 1, the gradient is −A · ∇log π; the KL is k3's, zero at the reference.
    log_probs = torch.log(torch.tensor([0.5, 0.25, 0.125])).requires_grad_()
    reference = torch.log(torch.tensor([0.5, 0.5, 0.5]))
    token_advantages = torch.tensor([1.0, -1.0, 2.0])
    loss = policy_loss(log_probs, log_probs.detach(), reference, token_advantages, epsilon=0.2, kl_beta=0.1)
    delta = reference - log_probs.detach()
    assert torch.allclose(loss.kl, torch.exp(delta) - delta - 1) and loss.kl[0] == 0
    loss.per_token.sum().backward()
    assert torch.allclose(log_probs.grad, -token_advantages + 0.1 * (1 - torch.exp(delta)))
    # A stale policy (ratio beyond 1 ± ε) is clipped where that lowers the objective, as PPO's surrogate.
    stale = policy_loss(torch.tensor([0.0, 0.0]), torch.tensor([-1.0, 1.0]), None, torch.tensor([1.0, 1.0]), 0.2, 0.0)
    assert torch.allclose(stale.per_token, torch.tensor([-1.2, -torch.exp(torch.tensor(-1.0))]))
    assert stale.clipped.tolist() == [True, False]
