"""`--compare` and `--judge` against models served over HTTP by a real `tunelab serve` process.

The compared model is the tiny base model behind the server's alias for gpt-4o-mini; the judge, served by the
same process, is the tiny model fine-tuned (all weights: a LoRA on a 64-wide random model cannot learn it) to
answer every grading prompt with "Score: 8" and every pairwise prompt with "Winner: 2" — a judge with a pure
position bias, which asking both ways must turn into ties.
"""

import json

from tunelab.core.settings import TrainConfig
from tunelab.eval.judge import JUDGE_PROMPT, PAIRWISE_PROMPT, conversation_text
from tunelab.eval.run import EvalConfig, evaluate
from tunelab.train.local import train

from tests.serving import API_KEY, Server

GPT = "gpt-4o-mini-2024-07-18"


def judge_training_data(conversations):
    examples = []
    for k, conversation in enumerate(conversations):
        prompt, reply = conversation["messages"][:-1], conversation["messages"][-1]["content"]
        other = conversations[(k + 1) % len(conversations)]["messages"][-1]["content"]
        grading = JUDGE_PROMPT.format(conversation=conversation_text(prompt), reference=reply, reply=other[:200])
        ranking = PAIRWISE_PROMPT.format(conversation=conversation_text(prompt), reference=reply, first=reply[:150],
                                         second=other[:150])
        examples += [{"messages": [{"role": "user", "content": grading},
                                   {"role": "assistant", "content": "Score: 8\nIt is close to the reference."}]},
                     {"messages": [{"role": "user", "content": ranking},
                                   {"role": "assistant", "content": "Winner: 2\nIt is closer to the reference."}]}]
    return examples


def test_compare_and_judge_through_a_served_model(tmp_path, tiny_model_dir, support_conversations, write_jsonl,
                                                  monkeypatch):
    judge_run = train(TrainConfig(data=str(write_jsonl("judge.jsonl", judge_training_data(support_conversations[:12]))),
                                  model=str(tiny_model_dir), out=str(tmp_path / "judge"), adapter="full", n_epochs=20,
                                  batch_size=4, learning_rate_multiplier=200))
    server = Server(tmp_path / "serve", "--alias", f"{GPT}={tiny_model_dir}", "--alias", f"judge={judge_run}")
    try:
        run = train(TrainConfig(data=str(write_jsonl("train.jsonl", support_conversations[:8])),
                                model=str(tiny_model_dir), out=str(tmp_path / "run"), n_epochs=1, batch_size=4))
        test_file = write_jsonl("test.jsonl", support_conversations[40:48])
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        out = evaluate(EvalConfig(model=str(run), data=str(test_file), fewshot=0, forgetting="off",
                                  max_new_tokens=16, scorers=["rouge_l", "ended_turn"],
                                  compare=[f"{GPT}@{server.base_url}"], judge=f"judge@{server.base_url}"))
        # The other way round: the served model as the one under test, against the same weights loaded here.
        matched = evaluate(EvalConfig(model=f"{GPT}@{server.base_url}", base=str(tiny_model_dir), data=str(test_file),
                                      fewshot=0, max_new_tokens=16, scorers=["rouge_l", "ended_turn"],
                                      out=str(tmp_path / "matched")))
    finally:
        server.stop()
    same = json.loads((matched / "results.json").read_text())
    assert same["systems"]["fine_tuned"]["kind"] == "endpoint" and same["systems"]["base"]["kind"] == "local"
    assert "needs both models' weights" in same["forgetting"]["skipped"]
    assert not any(c["detectable"] for c in same["comparisons"])
    results = json.loads((out / "results.json").read_text())

    assert list(results["systems"]) == ["base", GPT, "fine_tuned"], results["systems"]
    assert results["judge_unreadable"] == {"base": 0, GPT: 0, "fine_tuned": 0}
    assert results["systems"][GPT]["kind"] == "endpoint" and results["systems"][GPT]["url"] == server.base_url
    # The served model is the local base model: greedy replies agree (the same weights through HTTP).
    local = [e["outputs"]["base"]["text"] for e in results["examples"]]
    served = [e["outputs"][GPT]["text"] for e in results["examples"]]
    assert sum(a == b for a, b in zip(local, served)) >= 6, (local, served)
    assert {(c["a"], c["b"]) for c in results["comparisons"] if c["scorer"] == "rouge_l"} == {
        ("base", GPT), ("base", "fine_tuned"), (GPT, "fine_tuned")}
    # The judge graded every reply of every system through the server.
    for system in results["systems"].values():
        assert system["scores"]["judge"]["mean"] == 8 and system["scores"]["judge"]["n"] == 8
    judged = results["examples"][0]["outputs"]["fine_tuned"]["details"]["judge"]["judge"]
    assert judged.startswith("Score: 8")
    # Always "Winner: 2": asked both ways, the position bias cancels into ties.
    pairwise = [c for c in results["comparisons"] if c["scorer"] == "pairwise"]
    assert {(c["a"], c["b"]) for c in pairwise} == {("base", "fine_tuned"), (GPT, "fine_tuned")}
    for comparison in pairwise:
        assert comparison["ties"] == comparison["n"] == 8 and not comparison["detectable"]
    html = (out / "report.html").read_text()
    assert "Reply to grade" in html and "Winner: tie" in html  # both prompts are shown
