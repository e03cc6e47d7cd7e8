"""Property-based tests of the reader, the validator and the converter (hypothesis).

The hostile-input corpus (tests/test_hostile_inputs.py) holds the cases we thought of; these generate the
ones we did not: arbitrary bytes, arbitrary JSON, and near-valid conversations with every field bent. The
properties: nothing raises; every finding has a known code; what the validator accepts renders for
training; what the converter writes, the validator accepts.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunelab.conversation.reader import read_jsonl_lines
from tunelab.conversation.render import render_conversation
from tunelab.conversation.schema import ROLES, example_problems
from tunelab.data.formats import convert_record
from tunelab.data.validate import validate_file

CODES = {"data_type", "missing_messages_list", "message_missing_key", "message_unrecognized_key",
         "unrecognized_role", "missing_content", "example_missing_assistant_message", "invalid_weight",
         "invalid_tool_arguments", "invalid_tools", "tool_call_id_mismatch", "unsupported_content"}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)

texts = st.text(min_size=0, max_size=30)
parts = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio", "file", "refusal", "bogus"])}),
    json_values), max_size=3)
contents = st.one_of(texts, parts, st.none(), st.integers(), json_values)
arguments = st.one_of(st.dictionaries(st.text(max_size=5), json_values, max_size=3).map(json.dumps),
                      st.text(max_size=10), json_values)
tool_calls = st.lists(st.one_of(
    st.fixed_dictionaries({"id": st.one_of(st.sampled_from(["c1", "c2"]), json_values), "type": st.just("function"),
                           "function": st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["f", "g"]), json_values),
                                                              "arguments": arguments})}),
    json_values), max_size=2)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(sorted(ROLES)), json_values)},
    optional={"content": contents, "weight": st.one_of(st.sampled_from([0, 1, True, 0.5, "1"]), json_values),
              "tool_calls": tool_calls, "tool_call_id": st.one_of(st.sampled_from(["c1", "c2"]), json_values),
              "name": texts, "extra": json_values}), max_size=5)
tools = st.one_of(st.none(), st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.sampled_from(["f", "g"]), "parameters": st.just({"type": "object"})})}), json_values), max_size=2),
    json_values)
conversations = st.one_of(
    st.fixed_dictionaries({"messages": messages}, optional={"tools": tools}),
    json_values)


@FAST
@given(lines=st.lists(st.binary(max_size=60), max_size=8))
def test_the_reader_never_raises_on_any_bytes(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("bytes") / "any.jsonl"
    path.write_bytes(b"\n".join(lines))
    for line, record, unreadable in read_jsonl_lines(path):
        assert line >= 1 and (unreadable is None or unreadable.code in ("invalid_json", "not_utf8"))
    report = validate_file(path)  # the whole validator, file-level findings included
    assert all(f.line >= 0 and f.message for f in report.findings)


@FAST
@given(record=conversations)
def test_the_validator_never_raises_and_uses_known_codes(record):
    for problem in example_problems(record):
        assert problem.code in CODES and isinstance(problem.path, str) and problem.message


@FAST
@given(record=st.fixed_dictionaries({"messages": messages}, optional={"tools": tools}))
def test_what_the_validator_accepts_renders_for_training(record, tiny_tokenizer):
    if example_problems(record):
        return
    example = render_conversation(tiny_tokenizer, record["messages"], tools=record.get("tools"))
    assert len(example.input_ids) == len(example.labels) > 0


sharegpt_records = st.fixed_dictionaries(
    {"conversations": st.lists(st.one_of(
        st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "function_call", "observation",
                                                        "narrator"]),
                               "value": st.one_of(texts, st.dictionaries(st.sampled_from(["name", "arguments"]),
                                                                         json_values).map(json.dumps))}),
        json_values), max_size=5)},
    optional={"tools": st.one_of(tools, tools.map(json.dumps)), "system": texts, "id": json_values,
              "images": st.lists(texts, max_size=1)})
alpaca_records = st.fixed_dictionaries(
    {"instruction": contents, "output": contents},
    optional={"input": contents, "system": contents, "history": json_values})
input_output_records = st.fixed_dictionaries({"input": contents, "ideal_output": contents}, optional={"notes": texts})


# TRL's prompt-completion records: text or messages on either side, or anything else.
completion_records = st.fixed_dictionaries({"prompt": st.one_of(contents, messages),
                                           "completion": st.one_of(contents, messages)})


@FAST
@given(record=st.one_of(sharegpt_records.map(lambda r: ("sharegpt", r)), alpaca_records.map(lambda r: ("alpaca", r)),
                        input_output_records.map(lambda r: ("input-output", r)),
                        conversations.map(lambda r: ("openai", r)), completion_records.map(lambda r: ("trl", r))),
       system=st.one_of(st.none(), st.just("Be brief.")))
# Found by a fresh run: fields that must be lists, given as something else, crashed the converter.
@example(record=("alpaca", {"instruction": "0", "output": "0", "input": None, "history": True}), system=None)
@example(record=("sharegpt", {"conversations": 5}), system=None)
def test_what_the_converter_writes_the_validator_accepts(record, system):
    fmt, raw = record
    converted = convert_record(raw, fmt, system)
    if converted.conversation is None:
        assert converted.reason  # a record is never dropped without a reason
        return
    assert example_problems(converted.conversation) == [], (raw, converted.conversation)
    json.dumps(converted.conversation)  # and it can be written


# Preference pairs: any shape of input and outputs, through the pair checker, the renderer and the converters.
outputs = st.one_of(st.lists(st.one_of(st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["assistant", "user"]), json_values)},
    optional={"content": contents, "tool_calls": tool_calls}), json_values), max_size=2), json_values)
pairs = st.one_of(
    st.fixed_dictionaries({}, optional={
        "input": st.one_of(st.fixed_dictionaries({}, optional={"messages": messages, "tools": tools}), json_values),
        "preferred_output": outputs, "non_preferred_output": outputs, "preferred_completion": outputs}),
    json_values)
PAIR_CODES = CODES | {"missing_input", "input_ends_with_assistant", "missing_output", "invalid_output", "output_not_text"}


@FAST
@given(record=pairs)
def test_the_pair_checker_never_raises_and_what_it_accepts_renders(record, tiny_tokenizer):
    from tunelab.conversation.preference import preference_problems, read_pair

    problems = preference_problems(record)
    assert all(p.code in PAIR_CODES and isinstance(p.path, str) and p.message for p in problems)
    if problems:
        return
    pair = read_pair(record)
    for preferred in (True, False):
        conversation = pair.conversation(preferred)
        example = render_conversation(tiny_tokenizer, conversation["messages"], tools=conversation.get("tools"))
        assert example.trained_tokens > 0  # the output is scored


trl_records = st.fixed_dictionaries({"chosen": st.one_of(contents, messages), "rejected": st.one_of(contents, messages)},
                                    optional={"prompt": st.one_of(contents, messages)})
ranking_records = st.one_of(
    sharegpt_records.flatmap(lambda r: st.fixed_dictionaries({"chosen": json_values, "rejected": json_values}).map(
        lambda extra: ("sharegpt", {**r, **extra}))),
    alpaca_records.flatmap(lambda r: st.fixed_dictionaries({"chosen": contents, "rejected": contents}).map(
        lambda extra: ("alpaca", {**r, **extra}))))


@FAST
@given(record=st.one_of(trl_records.map(lambda r: ("trl", r)), ranking_records, pairs.map(lambda r: ("openai", r))),
       system=st.one_of(st.none(), st.just("Be brief.")))
def test_what_the_pair_converters_write_the_pair_checker_accepts(record, system):
    from tunelab.conversation.preference import is_preference, preference_problems

    fmt, raw = record
    converted = convert_record(raw, fmt, system)
    if converted.conversation is None:
        assert converted.reason
        return
    written = converted.conversation
    problems = preference_problems(written) if is_preference(written) else example_problems(written)
    assert problems == [], (raw, written)
    json.dumps(written)
