"""`tunelab eval` end to end on a tiny trained run: three systems generate, get scored, compared and reported."""

import json

from tunelab.core.settings import TrainConfig
from tunelab.eval.run import EvalConfig, evaluate
from tunelab.train.local import train

from tests.conftest import EXAMPLES, build_tiny_model


def test_eval_compares_base_fewshot_and_fine_tuned(tmp_path, tiny_model_dir, support_conversations, write_jsonl):
    train_file = write_jsonl("train.jsonl", support_conversations[:8])
    held_out = [dict(c, metadata={"tags": ["delivery" if k % 2 else "refund"]})
                for k, c in enumerate(support_conversations[40:46])]
    test_file = write_jsonl("test.jsonl", held_out)
    run = train(TrainConfig(data=str(train_file), model=str(tiny_model_dir), out=str(tmp_path / "run"),
                            n_epochs=1, batch_size=4))
    out = evaluate(EvalConfig(model=str(run), data=str(test_file), rubric=str(EXAMPLES / "rubric.yaml"),
                              max_new_tokens=12))

    results = json.loads((out / "results.json").read_text())
    assert out == run / "eval"
    assert list(results["systems"]) == ["base", "base_fewshot", "fine_tuned"]
    assert results["fewshot"] == {"k": 3, "from": str(train_file)}
    assert results["examples_count"] == 6
    for system in results["systems"].values():
        for name in ("rubric", "semantic_similarity", "ended_turn"):
            score = system["scores"][name]
            assert 0 <= score["ci95"][0] <= score["mean"] <= score["ci95"][1] <= 1
    pairs = {(c["a"], c["b"]) for c in results["comparisons"]}
    assert pairs == {("base", "base_fewshot"), ("base", "fine_tuned"), ("base_fewshot", "fine_tuned")}
    for comparison in results["comparisons"]:
        assert comparison["wins"] + comparison["ties"] + comparison["losses"] == comparison["n"] == 6
        assert 0 <= comparison["p_value"] <= 1
    assert set(results["slices"]) == {"delivery", "refund"} and results["slices"]["refund"]["n"] == 3
    forgetting = results["forgetting"]
    assert forgetting["general_text"]["passages"] == 24 and forgetting["probes"]["choice"] == 80
    assert forgetting["drift"]["kl_per_token"] > 0  # the adapter changed the model
    example = results["examples"][0]
    assert example["reference"] == support_conversations[40]["messages"][-1]["content"]
    for output in example["outputs"].values():
        assert output["finish_reason"] in ("stop", "length") and output["completion_tokens"] <= 12
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html  # loss curve and score chart are inlined
    assert "Brightlane house style" in html and results["verdict"] in html

    # A second evaluation reuses every reply: nothing is generated again.
    messages = []
    from tunelab.core.events import Events

    class Collect:
        def emit(self, event):
            messages.append(event.text)

    evaluate(EvalConfig(model=str(run), data=str(test_file), rubric=str(EXAMPLES / "rubric.yaml"),
                        max_new_tokens=12, forgetting="off"), Events(Collect()))
    assert sum("from the cache" in m for m in messages) == 3


def _replies(out):
    return [json.loads(line)["generation"]["text"] for line in (out / "generations" / "base.jsonl").read_text().splitlines()]


def test_sampled_evaluation_repeats_with_its_seed_and_records_its_number_format(tmp_path, support_conversations,
                                                                               write_jsonl):
    test_file = write_jsonl("test.jsonl", support_conversations[40:46])
    # Small initial weights: an untrained model whose replies are words (at 0.3 it writes special tokens).
    corpus = [m["content"] for c in support_conversations for m in c["messages"]]
    model = build_tiny_model(tmp_path / "model", corpus, initializer_range=0.02)

    def run(name, **options):
        out = evaluate(EvalConfig(model=str(model), data=str(test_file), scorers=["length"], forgetting="off",
                                  max_new_tokens=8, out=str(tmp_path / name), **options))
        return out, json.loads((out / "results.json").read_text())

    first, results = run("a", temperature=1.0, seed=3, dtype="fp32")
    again, _ = run("b", temperature=1.0, seed=3, dtype="fp32")
    other, _ = run("c", temperature=1.0, seed=4, dtype="fp32")
    greedy, greedy_results = run("d", dtype="bf16")
    assert results["decoding"] == "sampled: temperature 1, seed 3" and greedy_results["decoding"] == "greedy"
    assert results["systems"]["base"]["dtype"] == "fp32" and greedy_results["systems"]["base"]["dtype"] == "bf16"
    assert any(_replies(first)) and _replies(first) == _replies(again) != _replies(other)
    assert _replies(first) != _replies(greedy)


def test_bad_decoding_options_are_refused_before_any_model_loads(tmp_path, support_conversations, write_jsonl):
    import subprocess
    import sys

    test_file = write_jsonl("test.jsonl", support_conversations[40:42])
    for flags, phrase in [(["--dtype", "fp8"], "'fp8' is not one of 'auto', 'fp32', 'bf16', 'fp16'"),
                          (["--temperature", "3"], "Invalid value for '--temperature': Input should be less than or equal to 2"),
                          (["--top-p", "0"], "--top-p: 0.0 keeps no token")]:
        result = subprocess.run([sys.executable, "-m", "tunelab.cli", "eval", "--model", "no-such-model", "--data",
                                 str(test_file), "--out", str(tmp_path / "out"), *flags], capture_output=True, text=True)
        assert result.returncode == 2 and phrase in result.stderr, result.stdout + result.stderr  # a usage error
        assert "Traceback" not in result.stderr
