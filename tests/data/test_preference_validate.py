"""`validate_file` on a file of preference pairs: each malformed pair at its line with the path inside it, a chat
line in it named as mixed formats, warnings for pairs with nothing to learn or a length to learn, and tokens
counted for the prompt and each output as they train (each output rendered after the prompt)."""

import json

from tunelab.conversation.render import render_conversation
from tunelab.data.tokens import token_counter
from tunelab.data.validate import validate_file


def pairs_from(conversations, count):
    """Pairs built from chat examples: the prompt, its reply preferred, a clipped reply not."""
    pairs = []
    for conversation in conversations[:count]:
        *prompt, reply = conversation["messages"][:next(i for i, m in enumerate(conversation["messages"])
                                                        if m["role"] == "assistant") + 1]
        pairs.append({"input": {"messages": prompt}, "preferred_output": [reply],
                      "non_preferred_output": [{"role": "assistant", "content": reply["content"][:40]}]})
    return pairs


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_a_preference_file_is_checked_as_pairs(tmp_path, support_conversations):
    pairs = pairs_from(support_conversations, 14)
    same = dict(pairs[0], non_preferred_output=pairs[0]["preferred_output"])
    spaced = dict(pairs[1], non_preferred_output=[{"role": "assistant", "content": "  " + pairs[1]["preferred_output"][0]["content"].replace(" ", "\n", 3)}])
    records = pairs + [{"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": []},  # line 15
                       support_conversations[20],  # line 16: a chat example
                       same, spaced]  # lines 17, 18
    report = validate_file(write(tmp_path / "pairs.jsonl", records))
    found = {(f.code, f.line, f.path) for f in report.findings}
    assert ("invalid_output", 15, "preferred_output") in found
    assert ("missing_output", 15, "non_preferred_output") in found
    assert ("mixed_formats", 16, "") in found
    assert ("identical_outputs", 17, "non_preferred_output[0].content") in found
    assert ("outputs_differ_only_in_whitespace", 18, "non_preferred_output[0].content") in found
    assert ("duplicate_example", 17, "messages") not in found  # the same prompt again is how pairs are made
    assert not any(f.code == "conflicting_answers" for f in report.findings)
    assert report.stats["kind"] == "preference" and report.stats["valid_examples"] == 16
    unequal = [f.line for f in report.findings if f.code == "unequal_output_lengths"]
    assert unequal and all(len(pairs[line - 1]["preferred_output"][0]["content"]) >= 3 * 40 + 80 for line in unequal
                           if line <= 14)


def test_the_preferred_output_always_longer_is_a_length_bias(tmp_path, support_conversations):
    report = validate_file(write(tmp_path / "pairs.jsonl", pairs_from(support_conversations, 30)))
    assert [f.code for f in report.findings if f.line == 0 and f.severity == "warning"].count("length_bias") == 1
    assert report.stats["preferred_longer"] == 30


def test_tokens_are_those_of_the_prompt_and_each_output_as_they_train(tmp_path, support_conversations,
                                                                      tiny_model_dir, tiny_tokenizer):
    pairs = pairs_from(support_conversations, 12)
    report = validate_file(write(tmp_path / "pairs.jsonl", pairs), counter=token_counter(str(tiny_model_dir)))
    tokens = report.stats["tokens"]
    chosen = [render_conversation(tiny_tokenizer, p["input"]["messages"] + p["preferred_output"]) for p in pairs]
    rejected = [render_conversation(tiny_tokenizer, p["input"]["messages"] + p["non_preferred_output"]) for p in pairs]
    assert tokens["total"] == sum(len(c.input_ids) + len(r.input_ids) for c, r in zip(chosen, rejected))
    assert tokens["trained"] == sum(c.trained_tokens + r.trained_tokens for c, r in zip(chosen, rejected))
    assert tokens["preferred"]["max"] == max(c.trained_tokens for c in chosen)
    assert tokens["prompt"]["max"] == max(len(c.input_ids) - c.trained_tokens for c in chosen)
    assert report.cost is not None and report.errors == []
