"""`tunelab eval` end to end on a tiny trained run: three systems generate, get scored, compared and reported."""

import json

from tunelab.core.settings import TrainConfig
from tunelab.eval.run import EvalConfig, evaluate
from tunelab.train.local import train

from tests.conftest import EXAMPLES


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
