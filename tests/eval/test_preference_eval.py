"""`tunelab eval` on held-out preference pairs, on the tests' tiny model: supervised, then DPO `--from` it; the
evaluation compares the DPO model with the supervised one it started from (not the raw base), scores every
pair's two outputs under each, and reports the DPO model's reward accuracy with its interval."""

import json

import pytest

from tunelab.core.settings import TrainConfig
from tunelab.eval.run import EvalConfig, evaluate
from tunelab.train.local import train

from tests.train.test_dpo_run import pair_lines


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, support_conversations):
    folder = tmp_path_factory.mktemp("preference-eval")
    chat, pairs, held_out = folder / "chat.jsonl", folder / "pairs.jsonl", folder / "held_out.jsonl"
    chat.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:16]))
    pairs.write_text("".join(json.dumps(p) + "\n" for p in pair_lines(support_conversations[:32])))
    held = pair_lines(support_conversations[40:60])
    held[0]["metadata"] = {"tags": ["first"]}
    held_out.write_text("".join(json.dumps(p) + "\n" for p in held))
    common = dict(model=str(tiny_model_dir), batch_size=4, seed=3, dtype="fp32")
    supervised = train(TrainConfig(data=str(chat), out=str(folder / "sft"), n_epochs=1, learning_rate_multiplier=5,
                                   **common))
    dpo = train(TrainConfig(data=str(pairs), out=str(folder / "dpo"), method="dpo", from_run=str(supervised),
                            n_epochs=2, learning_rate_multiplier=20, **common))
    return supervised, dpo, held_out


def test_held_out_pairs_give_the_dpo_model_s_reward_accuracy_against_its_start(runs, tmp_path):
    supervised, dpo, held_out = runs
    out = evaluate(EvalConfig(model=str(dpo), data=str(held_out), forgetting="off", max_new_tokens=8, fewshot=0,
                              out=str(tmp_path / "eval")))
    results = json.loads((out / "results.json").read_text())
    systems = results["systems"]
    # The base is the run it started from, answering with its own adapter on.
    assert systems["base"]["model"] == json.loads((supervised / "job.json").read_text())["fine_tuned_model"]
    preference = results["preference"]
    assert preference["pairs"] == 20 and set(preference["systems"]) == {"base", "fine_tuned"}
    reward = preference["reward"]
    assert (reward["system"], reward["reference"], reward["beta"]) == ("fine_tuned", "base", 0.1)
    assert reward["accuracy"]["n"] == 20 and reward["accuracy"]["mean"] >= 0.75
    assert reward["accuracy"]["ci95"][0] > 0.5 and reward["margin"]["mean"] > 0  # learned, not chance
    # Generated replies to the pairs' inputs are scored against the preferred output as usual.
    assert results["examples_count"] == 20 and systems["fine_tuned"]["scores"]
    assert "first" in results["slices"]
    assert "held-out preference pairs" in results["verdict"] and "favours the preferred output" in results["verdict"]
    report = (out / "report.html").read_text()
    assert "Preference pairs" in report and "Reward accuracy of the fine-tune" in report


def test_a_model_on_its_own_gets_its_likelihood_preference_and_no_reward(runs, tmp_path, tiny_model_dir):
    """No fine-tune, no reference: each pair says only which output the model finds likelier per token."""
    _supervised, _dpo, held_out = runs
    out = evaluate(EvalConfig(model=str(tiny_model_dir), data=str(held_out), forgetting="off", max_new_tokens=4,
                              fewshot=0, out=str(tmp_path / "eval")))
    preference = json.loads((out / "results.json").read_text())["preference"]
    assert list(preference["systems"]) == ["base"] and "reward" not in preference
    estimate = preference["systems"]["base"]["likelihood_preference"]
    assert estimate["n"] == 20 and 0 <= estimate["ci95"][0] <= estimate["mean"] <= estimate["ci95"][1] <= 1
