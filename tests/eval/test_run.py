"""`tunelab eval` end to end on a tiny trained run: both systems generate, get scored, and are reported."""

import json

from tunelab.core.settings import TrainConfig
from tunelab.eval.run import evaluate
from tunelab.train.local import train

from tests.conftest import EXAMPLES


def test_eval_compares_base_and_fine_tuned(tmp_path, tiny_model_dir, support_conversations, write_jsonl):
    train_file = write_jsonl("train.jsonl", support_conversations[:8])
    test_file = write_jsonl("test.jsonl", support_conversations[40:46])
    run = train(TrainConfig(data=str(train_file), model=str(tiny_model_dir), out=str(tmp_path / "run"),
                            n_epochs=1, batch_size=4))
    out = evaluate(str(run), str(test_file), rubric=str(EXAMPLES / "rubric.yaml"), max_new_tokens=12)

    results = json.loads((out / "results.json").read_text())
    assert out == run / "eval"
    assert set(results["systems"]) == {"base", "fine-tuned"}
    assert results["examples_count"] == 6
    for system in results["systems"].values():
        assert 0 <= system["rubric"] <= 100 and 0 <= system["similarity"] <= 100
        assert 0 <= system["ended_turn_rate"] <= 1
    example = results["examples"][0]
    assert example["reference"] == support_conversations[40]["messages"][-1]["content"]
    for output in example["outputs"].values():
        assert output["finish_reason"] in ("stop", "length") and output["completion_tokens"] <= 12
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html  # loss curve and score chart are inlined
    assert "Brightlane house style" in html and "fine-tuned" in html
