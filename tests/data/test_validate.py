"""`tunelab data validate`: one malformed file per error code, each flagged with exactly that code at the
right line (through the real command's entry point, called in-process, and its --json output); a clean file
passes, and `--strict` fails it in a real process."""

import json
import subprocess
import sys

import pytest

from tests.conftest import run_cli

GOOD = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my order?"},
                     {"role": "assistant", "content": "It ships within 2 business days."}]}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "track", "arguments": '{"order": "BL-1"}'}}


def tool_example(arguments='{"order": "BL-1"}', tool_call_id="call_1", tools=None):
    call = dict(TOOL_CALL, function={"name": "track", "arguments": arguments})
    return {"tools": tools or [{"type": "function", "function": {"name": "track", "parameters": {}}}],
            "messages": [{"role": "user", "content": "Track BL-1"},
                         {"role": "assistant", "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": tool_call_id, "content": "in transit"},
                         {"role": "assistant", "content": "It is in transit and arrives in 2 days."}]}


# code → the bad line (placed as line 4 among good examples)
BAD_LINES = {
    "data_type": "[1, 2]",
    "missing_messages_list": json.dumps({"prompt": "hi", "completion": "there"}),
    "message_missing_key": json.dumps({"messages": [{"content": "hi"}, {"role": "assistant", "content": "Hello there."}]}),
    "message_unrecognized_key": json.dumps({"messages": [{"role": "user", "content": "hi", "mood": "sad"},
                                                         {"role": "assistant", "content": "Hello there."}]}),
    "unrecognized_role": json.dumps({"messages": [{"role": "customer", "content": "hi"},
                                                  {"role": "assistant", "content": "Hello there."}]}),
    "missing_content": json.dumps({"messages": [{"role": "user", "content": ""},
                                                {"role": "assistant", "content": "Hello there."}]}),
    "example_missing_assistant_message": json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
    "invalid_json": '{"messages": [',
    "not_utf8": b'{"messages": "\xff\xfe"}',
    "invalid_weight": json.dumps({"messages": [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "Hello there.", "weight": 0.5}]}),
    "invalid_tool_arguments": json.dumps(tool_example(arguments="order=BL-1")),
    "invalid_tools": json.dumps(tool_example(tools=[{"type": "function", "function": {"parameters": {}}}])),
    "tool_call_id_mismatch": json.dumps(tool_example(tool_call_id="call_9")),
}


def validate(*args, model="none"):
    """The real command, in-process (a process of its own adds nothing to what these tests check: the rules);
    token counting is off unless a model is given."""
    return run_cli("data", "validate", *map(str, args), "--json", "--model", str(model))


def write_file(path, bad_line):
    good = json.dumps(GOOD).encode()
    lines = [good, good.replace(b"order", b"parcel"), good.replace(b"brief", b"kind")]
    lines.append(bad_line if isinstance(bad_line, bytes) else bad_line.encode())
    fillers = ["today", "again", "please", "now", "kindly", "exactly", "still", "then", "anyway", "though"]
    lines += [good.replace(b"Where", f"Where, {word},".encode()) for word in fillers]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("code", sorted(BAD_LINES))
def test_each_error_code_is_flagged_alone_at_its_line(tmp_path, code):
    result = validate(write_file(tmp_path / f"{code}.jsonl", BAD_LINES[code]))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert [(f["code"], f["line"]) for f in errors] == [(code, 4)], errors


@pytest.mark.parametrize("shape, record", [
    ("TRL's prompt-completion", {"prompt": "Where is BL-1?", "completion": "In transit."}),
    ("Alpaca", {"instruction": "Where is BL-1?", "input": "", "output": "In transit."}),
    ("input/ideal_output", {"input": "Where is BL-1?", "ideal_output": "In transit."}),
    ("ShareGPT", {"conversations": [{"from": "human", "value": "Where is BL-1?"}, {"from": "gpt", "value": "Hi."}]})])
def test_a_file_of_another_shape_is_named_with_the_command_that_converts_it(tmp_path, shape, record):
    path = tmp_path / "theirs.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(GOOD) + "\n")
    findings = json.loads(validate(path).stdout)["findings"]
    assert [(f["code"], f["line"], f["severity"]) for f in findings if f["code"] == "other_format"] == [
        ("other_format", 1, "warning")]
    hint = next(f["message"] for f in findings if f["code"] == "other_format")
    assert hint == (f"this line is {shape} data, not chat JSONL; convert the file first: "
                    f"tunelab data convert {path} --out {tmp_path / 'theirs.chat.jsonl'}")
    # The command it names converts the file (the chat line after it is another shape to `auto`: dropped, named).
    converted = json.loads(run_cli("data", "convert", str(path), "--out", str(tmp_path / "theirs.chat.jsonl"),
                                   "--json").stdout)
    assert converted["written"] == 1 and [d["line"] for d in converted["dropped"]] == [2]
    # A chat file with one such line among chat lines is not told to convert (convert would drop the chat lines).
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(record) + "\n")
    assert not [f for f in json.loads(validate(path).stdout)["findings"] if f["code"] == "other_format"]


def test_file_level_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    few = tmp_path / "few.jsonl"
    few.write_text(json.dumps(GOOD) + "\n")
    for path, code in ((empty, "empty_file"), (few, "too_few_examples")):
        result = validate(path)
        assert result.returncode == 1
        assert [f["code"] for f in json.loads(result.stdout)["findings"] if f["severity"] == "error"] == [code]


def test_clean_file_passes_and_warnings_do_not_fail_unless_strict(tmp_path):
    path = write_file(tmp_path / "clean.jsonl", json.dumps(GOOD).replace("order", "refund"))
    result = validate(path)
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["examples"] == 14
    codes = {f["code"] for f in report["findings"]}
    assert codes == {"few_examples"}  # 14 < 50: a warning, not an error
    strict = subprocess.run([sys.executable, "-m", "tunelab.cli", "data", "validate", str(path), "--strict",
                             "--model", "none"], capture_output=True, timeout=120)
    assert strict.returncode == 1


def test_quality_warnings_point_at_lines(tmp_path):
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    conflicting = json.loads(json.dumps(GOOD))
    conflicting["messages"][2]["content"] = "It was cancelled yesterday, sorry about that."
    path = write_file(tmp_path / "quality.jsonl", json.dumps(short))
    with path.open("a") as handle:
        handle.write(json.dumps(GOOD) + "\n" + json.dumps(conflicting) + "\n")
    findings = json.loads(validate(path).stdout)["findings"]
    where = {(f["code"], f["line"]) for f in findings}
    assert ("reply_too_short", 4) in where
    assert ("duplicate_example", 15) in where  # line 15 repeats line 1
    assert ("conflicting_answers", 16) in where
    assert ("missing_system_message", 0) in where


def test_overlap_with_validation_file_is_reported(tmp_path):
    training = write_file(tmp_path / "train.jsonl", json.dumps(GOOD).replace("order", "refund"))
    validation = tmp_path / "valid.jsonl"
    validation.write_text(json.dumps(GOOD) + "\n")
    findings = json.loads(validate(training, "--validation", validation).stdout)["findings"]
    assert any(f["code"] == "validation_overlap" and f"{validation}:1" in f["message"] for f in findings)


def test_near_duplicates_are_told_apart_from_exact_ones(tmp_path):
    near = json.dumps(GOOD).replace("Where is my order?", "where is my ORDER")  # case and punctuation only
    path = write_file(tmp_path / "near.jsonl", near)
    with path.open("a") as handle:
        handle.write(json.dumps(GOOD) + "\n")
    where = {(f["code"], f["line"]) for f in json.loads(validate(path).stdout)["findings"]}
    assert ("near_duplicate_example", 4) in where
    assert ("duplicate_example", 15) in where
    assert ("near_duplicate_example", 15) not in where  # an exact duplicate is reported once, as exact


def test_parallel_scan_finds_what_a_single_pass_finds(tmp_path, monkeypatch, support_conversations):
    """Big files are scanned by one process per core; duplicates across the cut must still be found."""
    from tunelab.data import validate as validate_module

    conversations = support_conversations * 2  # every conversation twice, the copies in the second half
    conversations.insert(5, {"messages": [{"role": "user", "content": "hi"}]})  # an error in the first half
    path = tmp_path / "doubled.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    single = validate_module.validate_file(path)
    monkeypatch.setattr(validate_module, "PARALLEL_FROM_BYTES", 1)
    monkeypatch.setattr(validate_module.os, "cpu_count", lambda: 2)
    parallel = validate_module.validate_file(path)
    as_set = lambda report: sorted((f.code, f.line, f.message) for f in report.findings)  # noqa: E731
    assert as_set(parallel) == as_set(single)
    assert sum(f.code == "duplicate_example" for f in parallel.findings) == len(support_conversations)
    assert parallel.stats == single.stats


def test_a_scan_asked_for_from_a_thread_is_made_without_forking(tmp_path, monkeypatch, support_conversations):
    """The server validates uploads in its request threads: a fork there could copy a lock another of its
    threads holds, and the forked scan would wait on it for good (an upload once hung for 300 s so). There its
    processes start afresh, and find what the main thread's forked ones find."""
    import os
    import threading

    from tunelab.data import validate as validate_module

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in support_conversations * 2))
    monkeypatch.setattr(validate_module, "PARALLEL_FROM_BYTES", 1)
    monkeypatch.setattr(validate_module.os, "cpu_count", lambda: 2)
    forks, counting = [], [True]
    os.register_at_fork(before=lambda: counting[0] and forks.append(threading.current_thread().name))
    try:
        in_main = validate_module.validate_file(path)
        assert forks == ["MainThread"] * 2  # the main thread forks one scanning process per core
        forks.clear()
        found = {}
        request = threading.Thread(target=lambda: found.setdefault("report", validate_module.validate_file(path)))
        request.start()
        request.join(60)
    finally:
        counting[0] = False
    assert not forks and found["report"].stats == in_main.stats and found["report"].findings == in_main.findings


def test_token_counts_truncation_and_local_estimate(tmp_path, tiny_model_dir, tiny_tokenizer, support_conversations):
    from tunelab.conversation.render import render_conversation
    from tunelab.data.tokens import Counts

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:60]))
    reference = []
    for conversation in support_conversations[:60]:
        example = render_conversation(tiny_tokenizer, conversation["messages"])
        reference.append(Counts(len(example.input_ids), example.trained_tokens))
    limit = sorted(c.total for c in reference)[45]  # about a quarter of the examples are longer
    result = validate(path, "--max-tokens", limit, model=tiny_model_dir)
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    tokens = report["stats"]["tokens"]
    assert (tokens["total"], tokens["trained"]) == (sum(c.total for c in reference), sum(c.trained for c in reference))
    too_long = [f["line"] for f in report["findings"] if f["code"] == "example_too_long"]
    assert too_long == [line for line, c in enumerate(reference, start=1) if c.total > limit]
    assert tokens["tokens_cut"] == sum(c.total - limit for c in reference if c.total > limit)
    cost = report["cost"]
    assert cost["backend"] == "local" and cost["n_epochs"] == 3  # OpenAI's rule for 60 examples
    assert cost["tokens_per_epoch"] == sum(min(c.total, limit) for c in reference)


def test_openai_target_cost(tmp_path, support_conversations):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:40]))
    result = validate(path, "--target", "openai:gpt-4o-mini")
    report = json.loads(result.stdout)
    tokens, cost = report["stats"]["tokens"], report["cost"]
    assert tokens["counted_with"].startswith("o200k_base") and tokens["exact"]
    assert cost["model"] == "gpt-4o-mini-2024-07-18" and cost["n_epochs"] == 3  # 40 × 3 ≥ 100
    assert cost["billed_tokens"] == 3 * tokens["total"]
    assert cost["usd"] == round(3 * tokens["total"] * 3.00 / 1e6, 2)


def findings_for(tmp_path, record, name="one.jsonl") -> list[dict]:
    """The findings for a file of ten good examples and `record` on line 4."""
    result = validate(write_file(tmp_path / name, json.dumps(record) if not isinstance(record, bytes) else record))
    return [f for f in json.loads(result.stdout)["findings"] if f["line"] == 4]


def test_text_parts_are_valid_content_and_developer_is_the_system_role(tmp_path):
    record = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                           {"role": "user", "content": [{"type": "text", "text": "Where is "}, {"type": "text", "text": "BL-7?"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "It ships within 2 days."}]}]}
    assert findings_for(tmp_path, record) == []
    path = write_file(tmp_path / "all.jsonl", json.dumps(record))
    report = json.loads(validate(path).stdout)
    assert not any(f["code"] == "missing_system_message" for f in report["findings"])  # developer counts


def test_text_parts_render_joined_and_developer_folds_like_system(tiny_tokenizer):
    from tunelab.conversation.render import render_text

    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "Where is "}, {"type": "text", "text": "BL-7?"}]}]
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is BL-7?"}]
    assert render_text(tiny_tokenizer, parts, add_generation_prompt=True) == \
        render_text(tiny_tokenizer, plain, add_generation_prompt=True)


@pytest.mark.parametrize(("record", "code", "path", "words"), [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                   {"role": "assistant", "content": "Nice picture of a lamp."}]},
     "unsupported_content", "messages[0].content[0]", "an image (image_url part): not supported for this model"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there.", "weight": True}]},
     "invalid_weight", "messages[1].weight", "must be the integer 0 or 1; found true"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
                       "name": "f", "arguments": json.dumps(json.dumps({"a": 1}))}}]}]},
     "invalid_tool_arguments", "messages[1].tool_calls[0].function.arguments",
     'is a JSON string that holds a string ("{\\"a\\": 1}"), not an object'),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
                       "name": "f", "arguments": {"a": 1}}}]}]},
     "invalid_tool_arguments", "messages[1].tool_calls[0].function.arguments",
     "must be a string holding a JSON object; found an object (encode it with json.dumps)"),
    ({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "Hello there."}]},
     "missing_content", "messages[0].content", "found the number 42"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "Hello there."}]},
     "missing_content", "messages[0].content", "found null"),
])
def test_errors_say_what_was_found(tmp_path, record, code, path, words):
    found = findings_for(tmp_path, record)
    assert [(f["code"], f["path"]) for f in found] == [(code, path)], found
    assert words in found[0]["message"], found[0]["message"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(tmp_path, constant):
    line = ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there.", '
            f'"weight": {constant}}}]}}')
    found = findings_for(tmp_path, line.encode())
    assert [f["code"] for f in found] == ["invalid_json"] and f"{constant.lstrip('-')} is not JSON" in found[0]["message"]


def test_a_file_of_reinforcement_tasks_is_checked_as_tasks(tmp_path):
    """Prompts awaiting their reply, with the keys a grader reads: a line ending with an assistant's reply, or
    without messages, is named; a duplicate task is a warning, as duplicates are in chat files."""
    from tunelab.data.validate import validate_file

    tasks = [{"messages": [{"role": "user", "content": f"What is {k} + {k}?"}], "answer": str(2 * k)} for k in range(12)]
    tasks[3] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    tasks[5] = {"answer": "10"}
    tasks.append(dict(tasks[0]))
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    report = validate_file(path)
    assert report.stats["kind"] == "tasks" and report.examples == 13
    assert [(f.code, f.line, f.path) for f in report.errors] == [("task_ends_with_assistant", 4, "messages[1]"),
                                                                  ("missing_messages", 6, "messages")]
    assert any(f.code == "duplicate_example" and f.line == 13 for f in report.findings)
