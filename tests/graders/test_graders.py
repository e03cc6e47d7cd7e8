"""Every grader type against cases whose reward is known: OpenAI's guides' own examples, values worked out by
hand from the metrics' definitions, and the template edge cases (a missing key, output_json of a reply that is
not JSON, a reply with tool calls), with the error flag OpenAI's graders raise for each."""

from __future__ import annotations

import math

import pytest

from tunelab.graders.grade import ERROR_FLAGS, Grading
from tunelab.graders.sandbox import PythonSandbox
from tunelab.graders.spec import GraderSpecError, parse_grader
from tunelab.graders.templates import Sample

TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "lookup_order", "arguments": '{"order_id": "BL-1042"}'}}


def string_check(operation: str, input: str = "{{sample.output_text}}", reference: str = "{{item.label}}") -> dict:
    return {"type": "string_check", "name": "check", "input": input, "reference": reference, "operation": operation}


def similarity(metric: str) -> dict:
    return {"type": "text_similarity", "name": "similar", "input": "{{sample.output_text}}",
            "reference": "{{item.reference_answer}}", "evaluation_metric": metric}


FIELDS = {"name": {"type": "text_similarity", "name": "name", "input": "{{sample.output_json.name}}",
                   "reference": "{{item.name}}", "evaluation_metric": "fuzzy_match"},
          "email": {"type": "string_check", "name": "email", "input": "{{sample.output_json.email}}",
                    "reference": "{{item.email}}", "operation": "eq"}}
CONTACT = {"name": "Robin Vale", "email": "robin@brightlane.example"}
CONTACT_REPLY = '{"name": "robin vale", "email": "robin@brightlane.example"}'

# (case, grader, reply, tool calls, item, reward, error flags)
CASES = [
    # string_check: the graders guide's own example (a sentiment label), then each operation
    ("string eq, guide's example", string_check("eq"), "positive", [], {"label": "positive"}, 1.0, set()),
    ("string eq is case-sensitive", string_check("eq"), "Positive", [], {"label": "positive"}, 0.0, set()),
    ("string ne", string_check("ne"), "negative", [], {"label": "positive"}, 1.0, set()),
    ("string like: contains", string_check("like"), "it is positive.", [], {"label": "positive"}, 1.0, set()),
    ("string like: case matters", string_check("like"), "POSITIVE", [], {"label": "positive"}, 0.0, set()),
    ("string ilike: any case", string_check("ilike"), "POSITIVE!", [], {"label": "positive"}, 1.0, set()),
    ("nested item path and spaces in braces", string_check("eq", reference="{{ item.ticket.fields[0] }}"), "refund", [],
     {"ticket": {"fields": ["refund", "x"]}}, 1.0, set()),
    ("a number from the item is put in as JSON", string_check("eq", reference="{{item.count}}"), "3", [], {"count": 3}, 1.0, set()),
    # template edge cases
    ("missing item key", string_check("eq", reference="{{item.nope}}"), "positive", [], {"label": "positive"}, 0.0,
     {"invalid_variable_error"}),
    ("output_json of a reply that is not JSON", string_check("eq", input="{{sample.output_json.label}}"),
     "positive", [], {"label": "positive"}, 0.0, {"sample_parse_error"}),
    ("output_json key missing", string_check("eq", input="{{sample.output_json.label}}"), '{"other": 1}', [],
     {"label": "positive"}, 0.0, {"invalid_variable_error"}),
    ("output_json field", string_check("eq", input="{{sample.output_json.label}}"), '{"label": "positive"}', [],
     {"label": "positive"}, 1.0, set()),
    ("a reply with tool calls: the call's name", string_check("eq", input="{{sample.output_tools[0].function.name}}",
                                                              reference="lookup_order"),
     "", [TOOL_CALL], {}, 1.0, set()),
    ("a reply with tool calls: output_text is its content", string_check("eq", reference=""), "", [TOOL_CALL], {}, 1.0, set()),
    ("a reply with no tool calls has no output_tools[0]", string_check("eq", input="{{sample.output_tools[0].id}}"),
     "hello", [], {"label": "x"}, 0.0, {"invalid_variable_error"}),
    ("a namespace that is not item or sample", string_check("eq", input="{{answer}}"), "x", [], {"label": "x"}, 0.0,
     {"invalid_variable_error"}),
    # text_similarity: identical texts score 1; the rest worked out from the metrics' definitions
    ("fuzzy_match, the graders guide's run example", similarity("fuzzy_match"), "fuzzy wuzzy was a bear", [],
     {"reference_answer": "fuzzy wuzzy was a bear"}, 1.0, set()),
    ("fuzzy_match ignores case and the ends' punctuation", similarity("fuzzy_match"), "Fuzzy Wuzzy was a BEAR!", [],
     {"reference_answer": "fuzzy wuzzy was a bear"}, 1.0, set()),
    ("fuzzy_match of a substring: WRatio's partial ratio × 0.9", similarity("fuzzy_match"), "the cat sat", [],
     {"reference_answer": "the cat sat on the mat"}, 0.9, set()),
    ("bleu identical", similarity("bleu"), "the cat sat on the mat", [], {"reference_answer": "the cat sat on the mat"}, 1.0, set()),
    ("bleu: all n-grams match, brevity penalty e^(1-6/3)", similarity("bleu"), "the cat sat", [],
     {"reference_answer": "the cat sat on the mat"}, math.exp(-1), set()),
    ("gleu: min(precision, recall) = 6/18", similarity("gleu"), "the cat sat", [],
     {"reference_answer": "the cat sat on the mat"}, 1 / 3, set()),
    ("meteor identical: 1 − 0.5·(1/6)³ fragmentation", similarity("meteor"), "the cat sat on the mat", [],
     {"reference_answer": "the cat sat on the mat"}, 1 - 0.5 * (1 / 6) ** 3, set()),
    ("rouge_1: P 1, R 1/2", similarity("rouge_1"), "the cat sat", [], {"reference_answer": "the cat sat on the mat"}, 2 / 3, set()),
    ("rouge_2: P 2/2, R 2/5", similarity("rouge_2"), "the cat sat", [], {"reference_answer": "the cat sat on the mat"}, 4 / 7, set()),
    ("rouge_3: P 1/1, R 1/4", similarity("rouge_3"), "the cat sat", [], {"reference_answer": "the cat sat on the mat"}, 0.4, set()),
    ("rouge_4: no 4-gram in the reply", similarity("rouge_4"), "the cat sat", [], {"reference_answer": "the cat sat on the mat"}, 0.0, set()),
    ("rouge_5 identical", similarity("rouge_5"), "a b c d e f", [], {"reference_answer": "a b c d e f"}, 1.0, set()),
    ("rouge_l: longest common subsequence 3", similarity("rouge_l"), "the cat sat", [], {"reference_answer": "the cat sat on the mat"}, 2 / 3, set()),
    ("nothing in common", similarity("rouge_l"), "a dog ran", [], {"reference_answer": "the cat sat on the mat"}, 0.0, set()),
    ("cosine of identical texts", similarity("cosine"), "Your order shipped today.", [],
     {"reference_answer": "Your order shipped today."}, 1.0, set()),
    ("similarity with a missing reference", similarity("bleu"), "x", [], {}, 0.0, {"invalid_variable_error"}),
    # python: the graders guide's example (rapidfuzz inside the sandbox), and what a grader may return
    ("python, the guide's fuzzy example", {"type": "python", "name": "py", "source":
        "from rapidfuzz import fuzz, utils\n\ndef grade(sample, item) -> float:\n"
        "    return fuzz.WRatio(sample['output_text'], item['reference_answer'], processor=utils.default_process) / 100.0\n"},
     "fuzzy wuzzy was a bear", [], {"reference_answer": "fuzzy wuzzy was a bear"}, 1.0, set()),
    ("python reads output_json and output_tools", {"type": "python", "name": "py", "source":
        "def grade(sample, item):\n    return float(sample['output_json'] is None and sample['output_tools'][0]['function']['name'] == item['tool'])\n"},
     "", [TOOL_CALL], {"tool": "lookup_order"}, 1.0, set()),
    ("python returning a bool counts 1", {"type": "python", "name": "py", "source": "def grade(s, i):\n    return s['output_text'] == '4'\n"},
     "4", [], {}, 1.0, set()),
    ("python raising", {"type": "python", "name": "py", "source": "def grade(s, i):\n    return i['missing']\n"},
     "4", [], {}, 0.0, {"python_grader_runtime_error"}),
    ("python returning text", {"type": "python", "name": "py", "source": "def grade(s, i):\n    return 'yes'\n"},
     "4", [], {}, 0.0, {"python_grader_runtime_error"}),
    ("python without grade()", {"type": "python", "name": "py", "source": "def score(s, i):\n    return 1\n"},
     "4", [], {}, 0.0, {"python_grader_runtime_error"}),
    # multi: the three spellings of `graders`, and its formula
    ("multi, graders keyed by name (the RFT guide)", {"type": "multi", "name": "contact", "graders": FIELDS,
                                                      "calculate_output": "(name + email) / 2"},
     CONTACT_REPLY, [], CONTACT, 1.0, set()),
    ("multi, graders as a list (the spec's example)", {"type": "multi", "name": "contact", "graders": list(FIELDS.values()),
                                                       "calculate_output": "0.5 * name + 0.5 * email"},
     '{"name": "Robin Vale", "email": "someone@else.example"}', [], CONTACT, 0.5, set()),
    ("multi, one grader (the SDK's type)", {"type": "multi", "name": "contact", "graders": FIELDS["email"],
                                            "calculate_output": "email * 2 - 1"},
     CONTACT_REPLY, [], CONTACT, 1.0, set()),
    ("multi formula functions and ^ as a power", {"type": "multi", "name": "f", "graders": FIELDS,
                                                  "calculate_output": "min(1, max(0, sqrt(email) + abs(-0.5) ^ 2 - floor(0.7)))"},
     CONTACT_REPLY, [], CONTACT, 1.0, set()),
    ("multi with a reply that is not JSON", {"type": "multi", "name": "contact", "graders": FIELDS,
                                             "calculate_output": "(name + email) / 2"},
     "Robin Vale, robin@brightlane.example", [], CONTACT, 0.0, {"sample_parse_error"}),
    ("multi formula dividing by zero", {"type": "multi", "name": "f", "graders": FIELDS, "calculate_output": "email / (name - 1)"},
     CONTACT_REPLY, [], CONTACT, 0.0, {"other_error"}),
]


@pytest.fixture(scope="module")
def sandbox():
    return PythonSandbox()


@pytest.mark.parametrize("case, grader, reply, tools, item, reward, errors", CASES, ids=[case[0] for case in CASES])
def test_grader(case, grader, reply, tools, item, reward, errors, sandbox):
    graded = Grading(grader, sandbox=sandbox).grade_one(Sample(reply, tools), item)
    assert graded.errors == errors, graded.details
    assert graded.reward == pytest.approx(reward, abs=1e-6), graded.details
    answer = graded.to_openai()
    assert set(answer) == {"reward", "sub_rewards", "metadata", "model_grader_token_usage_per_model"}
    assert {flag for flag in ERROR_FLAGS if answer["metadata"]["errors"][flag]} == errors
    assert answer["metadata"]["name"] == grader["name"] and answer["metadata"]["type"] == grader["type"]
    if errors:
        assert answer["metadata"]["details"], "an error says what went wrong"


def test_multi_spellings_are_one_grader():
    keyed = parse_grader({"type": "multi", "name": "m", "graders": FIELDS, "calculate_output": "name + email"})
    listed = parse_grader({"type": "multi", "name": "m", "graders": list(FIELDS.values()), "calculate_output": "name + email"})
    assert keyed.model_dump(exclude_none=True) == listed.model_dump(exclude_none=True)
    assert list(keyed.graders) == ["name", "email"]


def test_multi_sub_rewards_and_scores():
    graded = Grading({"type": "multi", "name": "m", "graders": FIELDS, "calculate_output": "name * email"}).grade_one(
        Sample('{"name": "Robin", "email": "robin@brightlane.example"}'), CONTACT)
    assert graded.sub_rewards["email"] == 1.0 and 0 < graded.sub_rewards["name"] < 1
    assert graded.reward == pytest.approx(graded.sub_rewards["name"])
    assert graded.to_openai()["sub_rewards"] == graded.sub_rewards


BAD_GRADERS = [
    ({"type": "string_check", "name": "c", "input": "x", "reference": "y", "operation": "equals"}, "grader.operation"),
    ({"type": "string_check", "name": "c", "input": "x", "operation": "eq"}, "grader.reference"),
    ({"type": "text_similarity", "name": "t", "input": "x", "reference": "y", "evaluation_metric": "rouge_9"},
     "grader.evaluation_metric"),
    ({"type": "grade_it", "name": "c"}, "grader.type"),
    ({"type": "multi", "name": "m", "graders": FIELDS, "calculate_output": "name + phone"}, "grader.calculate_output"),
    ({"type": "multi", "name": "m", "graders": FIELDS, "calculate_output": "name +"}, "grader.calculate_output"),
    ({"type": "multi", "name": "m", "graders": FIELDS, "calculate_output": "__import__('os')"}, "grader.calculate_output"),
    ({"type": "multi", "name": "m", "graders": {"a": {"type": "string_check", "name": "a", "input": "x", "reference": "y",
                                                      "operation": "nope"}}, "calculate_output": "a"}, "grader.graders.a.operation"),
    ({"type": "multi", "name": "m", "graders": [FIELDS["name"], FIELDS["name"]], "calculate_output": "name"}, "grader.graders"),
    ({"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "x"}], "range": [1, 0]},
     "grader.range"),
    ({"type": "label_model", "name": "l", "model": "m", "input": [{"role": "user", "content": "x"}], "labels": ["a", "b"],
      "passing_labels": ["c"]}, "grader"),
    ({"type": "python", "name": "p", "source": ""}, "grader.source"),
    ({"type": "string_check", "name": "c", "input": "x", "reference": "y", "operation": "eq", "colour": "red"}, "grader.colour"),
    ("not an object", "grader"),
]


@pytest.mark.parametrize("grader, param", BAD_GRADERS, ids=[str(param) + f"-{i}" for i, (_, param) in enumerate(BAD_GRADERS)])
def test_a_grader_that_does_not_fit_names_its_field(grader, param):
    with pytest.raises(GraderSpecError) as refused:
        parse_grader(grader)
    assert refused.value.param == param
    assert str(refused.value).startswith(param + ":")


def test_a_formula_never_runs_python():
    """Attribute access, calls of anything unlisted and huge powers are refused or fail as a grade."""
    for formula in ("name.__class__", "open('x')", "[x for x in name]"):
        with pytest.raises(GraderSpecError):
            parse_grader({"type": "multi", "name": "m", "graders": FIELDS, "calculate_output": formula})
    graded = Grading({"type": "multi", "name": "m", "graders": FIELDS, "calculate_output": "9 ** 9 ** 9 + name"}).grade_one(
        Sample(CONTACT_REPLY), CONTACT)
    assert graded.errors == {"other_error"}
