"""OpenAI's preference format, one pair at a time: every malformed shape gets its code and the path inside the
pair; a valid pair (either spelling of the outputs) becomes two conversations sharing one prompt."""

import pytest

from tunelab.conversation.preference import is_preference, preference_problems, read_pair

USER = {"role": "user", "content": "Where is my order?"}
GOOD = {"role": "assistant", "content": "It ships today. — Robin"}
BAD = {"role": "assistant", "content": "It ships today."}


def pair(**changes):
    record = {"input": {"messages": [USER]}, "preferred_output": [GOOD], "non_preferred_output": [BAD]}
    record.update(changes)
    return {key: value for key, value in record.items() if value is not None}


CASES = [
    ("not an object", ["a", "list"], "data_type", ""),
    ("no input", pair(input=None), "missing_input", "input"),
    ("input is a string", pair(input="Where is my order?"), "missing_input", "input"),
    ("input without messages", pair(input={"tools": []}), "missing_messages_list", "input.messages"),
    ("a message without content", pair(input={"messages": [{"role": "user"}]}), "message_missing_key",
     "input.messages[0]"),
    ("an unknown role", pair(input={"messages": [{"role": "robot", "content": "hi"}]}), "unrecognized_role",
     "input.messages[0].role"),
    ("input ends on the assistant", pair(input={"messages": [USER, GOOD]}), "input_ends_with_assistant",
     "input.messages[1]"),
    ("no preferred output", pair(preferred_output=None), "missing_output", "preferred_output"),
    ("an output that is not a list", pair(non_preferred_output=BAD), "invalid_output", "non_preferred_output"),
    ("two messages in an output", pair(preferred_output=[GOOD, GOOD]), "invalid_output", "preferred_output"),
    ("an output from the user", pair(preferred_output=[USER]), "invalid_output", "preferred_output[0].role"),
    ("an empty output", pair(non_preferred_output=[{"role": "assistant", "content": "  "}]), "missing_content",
     "non_preferred_output[0].content"),
    ("an output without content", pair(preferred_output=[{"role": "assistant"}]), "message_missing_key",
     "preferred_output[0]"),
    ("an output that calls a tool", pair(preferred_output=[{"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "track", "arguments": "{}"}}]}]), "output_not_text",
     "preferred_output[0]"),
    ("an image in the input", pair(input={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}), "unsupported_content",
     "input.messages[0].content[0]"),
]


@pytest.mark.parametrize("record, code, path", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_malformed_pair_is_named_with_its_code_and_path(record, code, path):
    problems = preference_problems(record, line=7, file="pairs.jsonl")
    assert (code, path) in [(p.code, p.path) for p in problems], [str(p) for p in problems]
    assert all(p.line == 7 and str(p).startswith("pairs.jsonl:7: ") for p in problems)


def test_a_valid_pair_in_either_spelling_is_two_conversations_with_one_prompt():
    current = pair()
    older = {"input": current["input"], "preferred_completion": [GOOD], "non_preferred_completion": [BAD]}
    for record in (current, older):
        assert is_preference(record) and preference_problems(record) == []
        read = read_pair(record)
        chosen, rejected = read.conversation(preferred=True), read.conversation(preferred=False)
        assert chosen["messages"][:-1] == rejected["messages"][:-1] == [USER]
        assert (chosen["messages"][-1]["content"], rejected["messages"][-1]["content"]) == (GOOD["content"], BAD["content"])
    assert not is_preference({"messages": [USER, GOOD]})
    # `input` as text is Alpaca's or input/ideal_output data, not a pair (a train on it once said "holds
    # preference pairs"); as an object, with or without its outputs, it is a pair to check as one.
    assert not is_preference({"instruction": "Say hi.", "input": "", "output": "Hi."})
    assert not is_preference({"input": "Where is BL-1?", "ideal_output": "In transit."})
    assert is_preference({"input": {"messages": [USER]}}) and is_preference({"preferred_output": [GOOD]})
