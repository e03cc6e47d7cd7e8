"""The advice on data built here, one scenario per recommendation the issue names."""

import json
import re

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


def test_advise_on_the_command_line_reads_answers_and_prints_json(tmp_path):
    from tests.conftest import run_cli

    answers = tmp_path / "answers.yaml"
    answers.write_text("tried_best_model: yes\noptimized_prompt: yes\nrag_would_solve: no\nhigh_volume_narrow: yes\n"
                       "goal: format_reliability\n")
    data = write(tmp_path, format_task(150))
    shown = run_cli("advise", "--data", str(data), "--answers", str(answers), "--json")
    assert shown.returncode == 0, shown.stderr
    advice = json.loads(shown.stdout)
    assert advice["recommendation"] == "fine_tune" and advice["measurements"]["examples"] == 150
    assert {"step", "finding", "evidence"} == set(advice["reasons"][0]) and advice["next_steps"]
    answers.write_text("optimized_prompt: maybe\n")
    bad = run_cli("advise", "--answers", str(answers))
    assert bad.returncode == 1, bad.stderr
    assert f"{answers}: optimized_prompt: 'maybe' is not one of yes, no, unknown" in bad.stderr.decode()
    assert b"Traceback" not in bad.stderr


def test_the_questions_are_asked_in_a_terminal(tmp_path):
    import sys

    import pexpect

    session = pexpect.spawn(sys.executable, ["-m", "tunelab.cli", "advise", "--data", write(tmp_path, format_task(150))],
                            encoding="utf-8", timeout=120, dimensions=(40, 200))
    for reply in ("yes", "yes", "no", "yes"):
        session.expect(r"\[yes/no/unknown\]")
        session.sendline(reply)
    session.expect(r"\[1-8, Enter: unknown\]")
    session.sendline("3")  # a reliable output format
    session.expect(pexpect.EOF)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", session.before)  # the terminal gets colours
    assert "Recommendation: fine_tune (confidence 90%)" in shown and "a reliable output format" in shown


def test_an_evaluation_where_few_shot_matches_is_read_from_results_json():
    from tunelab.advise.decide import prompting_from_results

    results = {"scorers": [{"name": "length", "label": "reply tokens", "higher_is_better": None},
                           {"name": "rubric", "label": "house style", "higher_is_better": True}],
               "comparisons": [{"a": "base_fewshot", "b": "fine_tuned", "scorer": "rubric", "ci95": [-0.02, 0.04]}],
               "systems": {"base_fewshot": {"scores": {"rubric": {"mean": 0.90}}},
                           "fine_tuned": {"scores": {"rubric": {"mean": 0.91}}}}}
    found = prompting_from_results(results)
    assert found.scorer == "house style" and found.difference_ci == (-0.02, 0.04) and found.prompting_reaches_fine_tune


def test_the_demo_opens_with_the_advice_to_fine_tune_its_example(capsys):
    from tunelab.cli.demo import DEMO_CALLS_PER_DAY, advise_on_example

    advice = advise_on_example()
    shown = capsys.readouterr().err
    assert advice.recommendation == "fine_tune" and advice.confidence >= 0.8
    assert f"{DEMO_CALLS_PER_DAY:,} calls a day" in shown and "Recommendation: fine_tune" in shown
    assert [reason.step for reason in advice.reasons] == ["quality data", "would RAG solve it",
                                                          "high-volume narrow use", "good reason"]
