"""`score_model` and `label_model` against models whose answers are known: two tiny runs trained to answer every
prompt with one reply ("positive"; "Score: 7"), asked as a grader asks a local model — so each case's reward is
known, as in the table of the other grader types, and so are its errors."""

from __future__ import annotations

import pytest

from tests.conftest import train_tiny_run
from tunelab.graders.grade import Grading
from tunelab.graders.model import GradingModels
from tunelab.graders.templates import Sample

pytestmark = pytest.mark.slow


def answering(folder, conversations, reply: str):
    """A tiny run that answers every prompt with `reply` (greedy)."""
    taught = [{"messages": c["messages"][:-1] + [{"role": "assistant", "content": reply}]} for c in conversations]
    return str(train_tiny_run(folder, taught, n_epochs=3, learning_rate_multiplier=10))


@pytest.fixture(scope="module")
def models(tmp_path_factory, support_conversations):
    return {"positive": answering(tmp_path_factory.mktemp("positive"), support_conversations, "positive"),
            "seven": answering(tmp_path_factory.mktemp("seven"), support_conversations, "Score: 7")}


def messages(text: str) -> list[dict]:
    return [{"role": "developer", "content": "Grade the reply."}, {"role": "user", "content": text}]


def score_model(model: str, low: float = 0, high: float = 10) -> dict:
    return {"type": "score_model", "name": "judge", "model": model, "range": [low, high],
            "input": messages("Reference: {{item.reference}}\nReply: {{sample.output_text}}"),
            "sampling_params": {"temperature": 0, "max_completions_tokens": 6}}


def label_model(model: str, passing: list[str]) -> dict:
    return {"type": "label_model", "name": "sentiment", "model": model, "labels": ["positive", "negative"],
            "passing_labels": passing, "input": messages("Is this reply positive? {{sample.output_text}}"),
            "sampling_params": {"max_completions_tokens": 4}}


# (case, grader built from the models, reward, error flags)
CASES = [
    ("score_model reads 'Score: 7' in its range", lambda m: score_model(m["seven"]), 7.0, set()),
    ("score_model: 7 outside the range [0, 1] is an error, never clipped", lambda m: score_model(m["seven"], 0, 1), 0.0,
     {"model_grader_parse_error"}),
    ("score_model: a reply with no number", lambda m: score_model(m["positive"]), 0.0, {"model_grader_parse_error"}),
    ("label_model: a passing label", lambda m: label_model(m["positive"], ["positive"]), 1.0, set()),
    ("label_model: a label that does not pass", lambda m: label_model(m["positive"], ["negative"]), 0.0, set()),
    ("label_model: a reply that is no label", lambda m: label_model(m["seven"], ["positive"]), 0.0,
     {"model_grader_parse_error"}),
    ("score_model with a missing variable asks nothing", lambda m: {**score_model(m["seven"]), "input": messages("{{item.nope}}")},
     0.0, {"invalid_variable_error"}),
    ("multi over a model grader and a string check", lambda m: {
        "type": "multi", "name": "both", "calculate_output": "judge / 10 * 0.5 + exact * 0.5",
        "graders": {"judge": score_model(m["seven"]),
                    "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                              "reference": "{{item.reference}}", "operation": "eq"}}}, 0.85, set()),
]


@pytest.mark.parametrize("case, make, reward, errors", CASES, ids=[case[0] for case in CASES])
def test_model_grader(case, make, reward, errors, models):
    graded = Grading(make(models), models=SHARED).grade_one(Sample("It shipped."), {"reference": "It shipped."})
    assert graded.errors == errors, graded.details
    assert graded.reward == pytest.approx(reward), graded.details
    if not errors or errors == {"model_grader_parse_error"}:  # the model was asked: its tokens are counted
        usage = graded.to_openai()["model_grader_token_usage_per_model"]
        assert usage and all(u["prompt_tokens"] > 5 and 0 < u["completion_tokens"] <= 6 for u in usage.values())
        assert graded.to_openai()["metadata"]["token_usage"] == sum(u["total_tokens"] for u in usage.values())


SHARED = GradingModels()  # each grading model loaded once for all cases


def test_a_model_that_cannot_be_asked_is_a_server_error_not_an_exception(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    graded = Grading(score_model("gpt-5-judge")).grade_one(Sample("x"), {"reference": "y"})
    assert graded.errors == {"model_grader_server_error"}
    assert "OPENAI_API_KEY" in graded.model_server_details
    offline = Grading(score_model("judge@http://127.0.0.1:9/v1")).grade_one(Sample("x"), {"reference": "y"})
    assert offline.errors == {"model_grader_server_error"} and "cannot connect" in offline.model_server_details
