"""Every local scorer on replies built to pass and to fail: the rubric on the demo's own rubric, similarity on
real embeddings, ROUGE-L and chrF through their libraries, JSON, schemas and tool calls."""

from pathlib import Path

import pytest

import json

from tunelab.eval.items import Item
from tunelab.eval.judge import parse_score, parse_winner
from tunelab.eval.rubric import RubricScorer
from tunelab.eval.scorers import (ChrF, EndedTurn, ExactMatch, JsonSchema, JsonValid, Length, RougeL,
                                  SemanticSimilarity, ToolCall, choose_scorers, infer_schema)
from tunelab.models.generate import Generation

RUBRIC = Path(__file__).resolve().parents[2] / "tunelab" / "examples" / "support" / "rubric.yaml"
GOOD = ("Hi there,\n\nI'm sorry the lamp arrived cracked. Could you reply with your order number (it starts with "
        "BL-) and a photo? A replacement ships within 2 business days.\n\n— Robin, Brightlane Support")


@pytest.fixture(scope="module")
def rubric():
    return RubricScorer.from_yaml(RUBRIC)


def prompt(text):
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]


def test_a_house_style_reply_scores_100(rubric):
    result = rubric.score(prompt("My lamp arrived and the package was crushed."), GOOD)
    assert result.score == 1
    assert set(result.checks) == {"greeting", "sign_off", "brief", "timeframe", "no_exclamation",
                                  "no_unfortunately"}


def test_each_rule_can_fail(rubric):
    bad = "Unfortunately we can't help! It will be fixed soon. One. Two. Three. Four."
    result = rubric.score(prompt("Where is my package?"), bad)
    assert not any(result.checks.values())
    assert result.score == 0


def test_order_number_must_be_quoted_once_the_customer_gave_it(rubric):
    asked = prompt("My order BL-123456 has not arrived.")
    assert rubric.score(asked, GOOD).checks["quotes_order_number"] is False
    quoting = GOOD.replace("Could you reply with your order number (it starts with BL-) and a photo?",
                           "I've checked BL-123456.")
    assert rubric.score(asked, quoting).checks["quotes_order_number"] is True
    assert "quotes_order_number" not in rubric.score(prompt("How do I change my password?"), GOOD).checks


def test_rubric_file_errors_name_the_check(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("checks:\n  - id: x\n    regex: a\n    not_regex: b\n")
    with pytest.raises(ValueError, match=r"checks\[0\]"):
        RubricScorer.from_yaml(path)


def item(reference: str, calls=(), tools=None, line=1) -> Item:
    return Item(line, prompt("question"), reference, reference, list(calls), tools)


def reply(text: str, finish_reason="stop", tokens=5, tool_calls=()) -> Generation:
    return Generation(text=text, finish_reason=finish_reason, completion_tokens=tokens, tool_calls=list(tool_calls))


def test_similarity_ranks_a_paraphrase_above_an_unrelated_reply():
    reference = "Your refund will reach your card within 5 to 7 business days."
    close, far = SemanticSimilarity().score(
        [item(reference)] * 2, [reply("The refund should appear on your card in 5-7 business days."),
                                reply("Our sofas come in three colours.")]).values
    assert close > 0.8 and far < 0.4


def test_text_overlap_scorers_rank_the_reference_first():
    reference = "Your parcel left our warehouse on Monday and should arrive by Thursday."
    replies = [reply(reference), reply("Your parcel left on Monday; expect it Thursday."), reply("We sell lamps.")]
    for scorer in (RougeL(), ChrF()):
        same, close, far = scorer.score([item(reference)] * 3, replies).values
        assert same == pytest.approx(1.0) and same > close > far >= 0, scorer.name
    assert ExactMatch().score([item("Paris")] * 3, [reply(" Paris "), reply("paris"), reply("Lyon")]).values == [1, 0, 0]


def test_json_scorers_accept_only_the_reply_itself_as_json():
    references = [item('{"city": "Paris", "nights": 2}'), item('{"city": "Rome", "nights": 3, "pets": true}')]
    schema = JsonSchema.inferred(references, "test.jsonl")
    assert schema.schema["required"] == ["city", "nights"] and schema.schema["additionalProperties"] is False
    replies = [reply('{"city": "Oslo", "nights": 1}'), reply('Sure! {"city": "Oslo", "nights": 1}'),
               reply('{"city": "Oslo"}'), reply('{"city": "Oslo", "nights": "two"}'),
               reply('{"city": "Oslo", "nights": 1, "extra": 1}')]
    assert JsonValid().score([references[0]] * 5, replies).values == [1, 0, 1, 1, 1]
    scored = schema.score([references[0]] * 5, replies)
    assert scored.values == [1, 0, 0, 0, 0]
    assert "nights" in scored.details[2]["error"] and "required" in scored.details[2]["error"]


def test_schema_inference_merges_types_and_recurses():
    schema = infer_schema([{"n": 1, "tags": ["a"], "inner": {"x": 1}}, {"n": 2.5, "tags": [], "inner": {"x": 2, "y": None}}])
    assert schema["properties"]["n"]["type"] == "number"
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert schema["properties"]["inner"]["required"] == ["x"]
    assert schema["properties"]["inner"]["properties"]["y"]["type"] == "null"


def test_schema_errors_name_the_file_and_place(tmp_path):
    bad = tmp_path / "schema.json"
    bad.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "nonsense"}}}))
    with pytest.raises(ValueError, match=r"schema.json: properties/a/type: not a valid JSON Schema"):
        JsonSchema.from_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="schema.json: not valid JSON"):
        JsonSchema.from_file(bad)
    with pytest.raises(ValueError, match=r"test.jsonl: line 7: the reference reply is not JSON"):
        JsonSchema.inferred([item("plain text", line=7)], "test.jsonl")


def test_tool_call_compares_names_and_arguments_as_json():
    tools = [{"type": "function", "function": {"name": "get_order", "parameters": {}}}]
    wanted = item("", calls=[("get_order", {"id": "BL-1", "full": True})], tools=tools)
    call = lambda arguments: {"id": "c", "type": "function", "function": {"name": "get_order", "arguments": arguments}}
    replies = [reply("", tool_calls=[call('{"full": true, "id": "BL-1"}')]), reply("", tool_calls=[call('{"id": "BL-2"}')]),
               reply("I will look it up.")]
    assert ToolCall().score([wanted] * 3, replies).values == [1, 0, 0]
    no_call_wanted = item("Happy to help.", tools=tools)
    assert ToolCall().score([no_call_wanted, item("no tools here")], [reply("Sure."), reply("x")]).values == [1, None]


def test_ended_turn_and_length():
    replies = [reply("a", "stop", 3), reply("b", "length", 12), reply("", "tool_calls", 7)]
    assert EndedTurn().score([item("x")] * 3, replies).values == [1, 0, 1]
    assert Length().score([item("x")] * 3, replies).values == [3, 12, 7]


def test_scorers_are_chosen_from_the_data():
    def names(items, **options):
        return [s.name for s in choose_scorers(None, items, "test.jsonl", **options)]

    assert names([item('{"a": 1}')]) == ["json_valid", "json_schema", "ended_turn", "length"]
    assert names([item("positive"), item("negative")])[:2] == ["exact_match", "semantic_similarity"]
    long_text = "A full sentence of reference text, long enough to be free text rather than a label."
    assert "exact_match" not in names([item(long_text)])
    assert names([item(long_text)], rubric=str(RUBRIC))[0] == "rubric"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert "tool_call" in names([item("x", tools=tools)])
    with pytest.raises(ValueError, match="unknown scorer bleu"):
        choose_scorers(["bleu"], [item("x")], "test.jsonl")
    with pytest.raises(ValueError, match="--scorers rubric needs --rubric"):
        choose_scorers(["rubric"], [item("x")], "test.jsonl")


def test_judge_answers_are_read_or_left_unscored():
    assert parse_score("Score: 7\nClose to the reference.") == 7
    assert parse_score("**Score:** 10 — perfect") == 10
    assert parse_score("I would give it a good mark.") is None
    assert parse_winner("Winner: 2\nReply 2 signs off.") == "2"
    assert parse_winner("winner: TIE") == "tie"
    assert parse_winner("Both are fine.") is None
