"""The advice on data built here, one scenario per recommendation the issue names."""

import json

from tests.advise.test_form import knowledge_questions
from tests.conftest import EXAMPLES, read_jsonl
from tunelab.advise.decide import Answers, PromptingResult, decide, measure_data

READY = Answers(tried_best_model="yes", optimized_prompt="yes", rag_would_solve="no", high_volume_narrow="yes",
                goal="format_reliability")


def write(tmp_path, conversations):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return str(path)


def format_task(count: int) -> list[dict]:
    """A consistent extraction task: the same JSON shape every time, facts only from the prompt."""
    names = ["Dana Whitfield", "Omar Haddad", "Lena Berg", "Kofi Mensah", "Ines Alvarez", "Yuki Tanaka"]
    return [{"messages": [
        {"role": "system", "content": "Extract the order as JSON."},
        {"role": "user", "content": f"Order BL-{1000 + n} for {names[n % 6]}: {n % 5 + 1} lamps, due 2026-03-{n % 28 + 1:02d}."},
        {"role": "assistant", "content": json.dumps({"order": f"BL-{1000 + n}", "name": names[n % 6],
                                                      "items": n % 5 + 1, "due": f"2026-03-{n % 28 + 1:02d}"})}]}
            for n in range(count)]


def test_twenty_good_examples_need_more_data(tmp_path):
    advice = decide(READY, measure_data(write(tmp_path, read_jsonl(EXAMPLES / "train.jsonl")[:20])))
    assert advice.recommendation == "more_data" and "20 examples" in advice.reasons[0].finding


def test_a_knowledge_set_should_use_rag(tmp_path):
    advice = decide(READY, measure_data(write(tmp_path, knowledge_questions(120))))
    assert advice.recommendation == "use_rag" and "of reply words are new" in advice.reasons[-1].evidence


def test_a_consistent_format_task_with_the_framework_answered_is_a_fine_tune(tmp_path):
    measured = measure_data(write(tmp_path, format_task(150)))
    advice = decide(READY, measured)
    assert (advice.recommendation, measured.examples, measured.form.json_share) == ("fine_tune", 150, 1.0)
    assert advice.confidence >= 0.8 and [r.step for r in advice.reasons][:2] == ["quality data", "would RAG solve it"]


def test_an_unoptimised_prompt_comes_first(tmp_path):
    answers = Answers(**{**READY.__dict__, "optimized_prompt": "no"})
    assert decide(answers, measure_data(write(tmp_path, format_task(150)))).recommendation == "prompt_first"


def test_prompting_that_matches_the_fine_tune_comes_first(tmp_path):
    measured = measure_data(write(tmp_path, format_task(150)))
    measured.prompting = PromptingResult("rubric", fewshot=0.93, fine_tuned=0.95, difference_ci=(-0.01, 0.05))
    advice = decide(READY, measured)
    assert advice.recommendation == "prompt_first" and "includes 0" in advice.reasons[-1].evidence


def test_many_conflicting_answers_need_better_data(tmp_path):
    conversations = format_task(100)
    for n in range(0, 40, 2):  # every other of the first 40 prompts gets a second, different answer
        twin = json.loads(json.dumps(conversations[n]))
        twin["messages"][2]["content"] = json.dumps({"order": "unknown"})
        conversations.append(twin)
    advice = decide(READY, measure_data(write(tmp_path, conversations)))
    assert advice.recommendation == "improve_data" and "conflict" in advice.reasons[0].evidence


def test_unknown_answers_lower_the_confidence(tmp_path):
    measured = measure_data(write(tmp_path, format_task(150)))
    assert decide(Answers(), measured).confidence < decide(READY, measured).confidence
