"""`tunelab eval --grader`: OpenAI's graders score base and fine-tuned replies, with intervals and paired tests,
on held-out reinforcement tasks (no reference replies) and on chat examples (the reference as item.reference)."""

import json

import pytest

from tunelab.core.settings import TrainConfig
from tunelab.eval.run import EvalConfig, evaluate
from tunelab.graders.grade import Grading
from tunelab.graders.templates import Sample
from tunelab.train.local import train

LENGTH = {"type": "python", "name": "short", "source": "def grade(sample, item):\n"
                                                       "    return max(0.0, 1 - len(sample['output_text']) / 100)\n"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir, support_conversations):
    folder = tmp_path_factory.mktemp("grader-eval")
    chat = folder / "chat.jsonl"
    chat.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:16]))
    tasks = folder / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"messages": c["messages"][:-1], "topic": "order"}) + "\n"
                             for c in support_conversations[40:52]))
    held_out = folder / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[52:62]))
    done = train(TrainConfig(data=str(chat), out=str(folder / "sft"), model=str(tiny_model_dir), n_epochs=1,
                             batch_size=4, learning_rate_multiplier=5, dtype="fp32"))
    grader = folder / "length.json"
    grader.write_text(json.dumps(LENGTH))
    return done, tasks, held_out, grader


def test_a_grader_scores_held_out_tasks_with_intervals_and_a_paired_test(run, tmp_path):
    done, tasks, _held_out, grader = run
    out = evaluate(EvalConfig(model=str(done), data=str(tasks), grader=str(grader), forgetting="off", fewshot=0,
                              max_new_tokens=12, out=str(tmp_path / "eval")))
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["scorers"]] == ["grader", "ended_turn", "length"]  # no references to compare
    assert results["scorers"][0]["label"] == "grader 'short' (python)" and results["scorers"][0]["grader"] == LENGTH
    for system in ("base", "fine_tuned"):
        summary = results["systems"][system]["scores"]["grader"]
        assert summary["n"] == 12 and summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    compared = next(c for c in results["comparisons"] if c["scorer"] == "grader" and c["b"] == "fine_tuned")
    assert compared["n"] == 12 and compared["test"] and compared["ci95"][0] <= compared["mean_diff"] <= compared["ci95"][1]
    assert results["verdict"].startswith("Fine-tuning") and "grader 'short' (python)" in results["verdict"]
    # The same rewards as the grader gives those replies itself (what training would have rewarded).
    cached = [json.loads(line)["generation"] for line in (out / "generations" / "fine_tuned.jsonl").read_text().splitlines()]
    direct = Grading(LENGTH).grade([Sample(g["text"]) for g in cached], [{"topic": "order"}] * len(cached))
    assert sorted(g.reward for g in direct) == sorted(d["reward"] for d in _details(out, "fine_tuned"))
    assert "grader &#39;short&#39; (python)" in (out / "report.html").read_text()


def test_a_grader_on_chat_examples_reads_the_reference_and_counts_its_errors(run, tmp_path):
    done, _tasks, held_out, _grader = run
    grader = tmp_path / "multi.json"
    grader.write_text(json.dumps({
        "type": "multi", "name": "reply", "calculate_output": "similar",
        "graders": {"similar": {"type": "text_similarity", "name": "similar", "input": "{{sample.output_text}}",
                                "reference": "{{item.reference}}", "evaluation_metric": "rouge_1"},
                    "missing": {"type": "string_check", "name": "missing", "input": "{{sample.output_text}}",
                                "reference": "{{item.nope}}", "operation": "eq"}}}))
    out = evaluate(EvalConfig(model=str(done), data=str(held_out), grader=str(grader), forgetting="off", fewshot=0,
                              max_new_tokens=8, out=str(tmp_path / "eval"), scorers=["rouge_l"]))
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["scorers"]] == ["grader", "rouge_l"]
    details = _details(out, "fine_tuned")
    assert len(details) == 10 and all(d["errors"] == ["invalid_variable_error"] for d in details)
    assert all(0 <= d["sub_rewards"]["similar"] <= 1 and d["reward"] == d["sub_rewards"]["similar"] for d in details)


def test_tasks_without_a_grader_are_refused_before_any_model_loads(run, tmp_path):
    done, tasks, _held_out, _grader = run
    with pytest.raises(ValueError, match="no reference replies .* --grader FILE"):
        evaluate(EvalConfig(model=str(done), data=str(tasks), forgetting="off", out=str(tmp_path / "eval")))


def _details(out, system: str) -> list[dict]:
    """The grader's per-example details as results.json keeps them."""
    results = json.loads((out / "results.json").read_text())
    return [example["outputs"][system]["details"]["grader"] for example in results["examples"]]
