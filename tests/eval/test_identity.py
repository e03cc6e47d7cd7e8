"""The evaluation must not invent differences: a "fine-tuned" model that is the base model itself shows no
detectable difference on any scorer and no forgetting, with every scorer that applies to free text."""

import json

from tunelab.eval.run import EvalConfig, evaluate


def test_the_base_model_against_itself_shows_no_difference(tmp_path, tiny_model_dir, support_conversations,
                                                            write_jsonl):
    test_file = write_jsonl("test.jsonl", support_conversations[40:52])
    out = evaluate(EvalConfig(model=str(tiny_model_dir), base=str(tiny_model_dir), data=str(test_file),
                              fewshot=0, max_new_tokens=16, out=str(tmp_path / "eval"),
                              scorers=["exact_match", "rouge_l", "chrf", "semantic_similarity", "json_valid",
                                       "ended_turn", "length"]))
    results = json.loads((out / "results.json").read_text())

    assert list(results["systems"]) == ["base", "fine_tuned"]
    comparisons = [c for c in results["comparisons"] if (c["a"], c["b"]) == ("base", "fine_tuned")]
    assert {c["scorer"] for c in comparisons} == {"exact_match", "rouge_l", "chrf", "semantic_similarity",
                                                  "json_valid", "ended_turn", "length"}
    for comparison in comparisons:
        assert comparison["mean_diff"] == 0 and comparison["ci95"] == [0, 0], comparison
        assert not comparison["detectable"] and comparison["wins"] == comparison["losses"] == 0
    forgetting = results["forgetting"]
    assert forgetting["general_text"]["relative_change"] == 0 and forgetting["general_text"]["ci95"] == [0, 0]
    assert forgetting["drift"]["kl_per_token"] == 0
    assert forgetting["probes"]["lost"] == [] and forgetting["probes"]["gained"] == []
    assert "no detectable difference" in results["verdict"]
    assert "No detectable forgetting" in results["verdict"] and "0 of 80 probes lost" in results["verdict"]
