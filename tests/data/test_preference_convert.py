"""`tunelab data convert` on the field's preference formats — TRL's prompt/chosen/rejected (text, conversations,
implicit prompt) and LLaMA-Factory's ranking data (ShareGPT and Alpaca forms) — into OpenAI's preference lines
that validate, each dropped record named with its line and reason."""

import json

import pytest

from tunelab.data.formats import convert_file
from tunelab.data.validate import validate_file

USER = {"role": "user", "content": "Where is my order?"}
YES, NO = "It ships today. — Robin", "Dunno."


def expected(messages=(USER,), preferred=YES, non_preferred=NO):
    return {"input": {"messages": list(messages)}, "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": non_preferred}]}


def convert(tmp_path, records, fmt="auto", **options):
    source = tmp_path / "source.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = convert_file(source, tmp_path / "out.jsonl", fmt, **options)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] if report.written else []
    return report, written


CASES = {
    "trl-preference, text": ({"prompt": USER["content"], "chosen": YES, "rejected": NO}, expected()),
    "trl-preference, conversations": (
        {"prompt": [USER], "chosen": [{"role": "assistant", "content": YES}], "rejected": [{"role": "assistant", "content": NO}]},
        expected()),
    "trl-preference, implicit prompt": (
        {"chosen": [USER, {"role": "assistant", "content": YES}], "rejected": [USER, {"role": "assistant", "content": NO}]},
        expected()),
    "sharegpt-ranking": (
        {"conversations": [{"from": "human", "value": USER["content"]}], "system": "Be kind.",
         "chosen": {"from": "gpt", "value": YES}, "rejected": {"from": "gpt", "value": NO}},
        expected([{"role": "system", "content": "Be kind."}, USER])),
    "alpaca-ranking": ({"instruction": "Where is my order?", "input": "BL-7", "chosen": YES, "rejected": NO},
                       expected([{"role": "user", "content": "Where is my order?\n\nBL-7"}])),
    "openai-preference, older spelling": (
        {"input": {"messages": [USER]}, "preferred_completion": [{"role": "assistant", "content": YES}],
         "non_preferred_completion": [{"role": "assistant", "content": NO}]}, expected()),
}


@pytest.mark.parametrize("fmt", list(CASES))
def test_each_preference_format_becomes_openai_s_preference_line(tmp_path, fmt):
    record, wanted = CASES[fmt]
    report, written = convert(tmp_path, [record] * 12)
    family = {"trl-preference": "trl", "sharegpt-ranking": "sharegpt", "alpaca-ranking": "alpaca",
              "openai-preference": "openai"}[fmt.split(",")[0]]
    assert report.format == family and report.pairs == 12 and report.dropped == [] and report.not_carried == []
    assert written == [wanted] * 12
    checked = validate_file(tmp_path / "out.jsonl")
    assert checked.errors == [] and checked.stats["kind"] == "preference"


def test_what_cannot_be_a_one_turn_pair_is_dropped_with_its_line(tmp_path):
    good = {"prompt": [USER], "chosen": [{"role": "assistant", "content": YES}], "rejected": [{"role": "assistant", "content": NO}]}
    records = [good,
               dict(good, chosen=[{"role": "assistant", "content": YES}, USER]),  # two messages
               {"chosen": [USER, {"role": "assistant", "content": YES}],  # the implicit prompts differ
                "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": NO}]},
               {"chosen": YES, "rejected": NO},  # plain text without a prompt
               dict(good, rejected=NO),  # a list and a string
               dict(good, extra="kept?")]
    report, written = convert(tmp_path, records, "trl", system="Be kind.")
    reasons = dict(report.dropped)
    assert sorted(reasons) == [2, 3, 4, 5]
    assert "one assistant message each" in reasons[2] and "give it as `prompt`" in reasons[3]
    assert "needs its prompt" in reasons[4] and "both be text or both lists" in reasons[5]
    assert report.not_carried == [(6, "field `extra`")]
    assert written[0]["input"]["messages"][0] == {"role": "system", "content": "Be kind."}  # --system goes in the input
    assert len(written) == 2
