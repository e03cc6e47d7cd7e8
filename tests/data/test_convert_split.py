"""`tunelab data convert` and `tunelab data split`, through the real commands."""

import csv
import json

from tests.conftest import run_cli

# The two training examples of the first seed (shared/seeds/000_*.txt), exactly as it prints them.
SEED_SYSTEM = "You are a customer support agent for TechCorp. Be concise and helpful."
SEED_EXAMPLES = [
    {"messages": [
        {"role": "system", "content": SEED_SYSTEM},
        {"role": "user", "content": "My order hasn't arrived after 7 days."},
        {"role": "assistant", "content": "I apologize for the delay. Can you share your order number? I'll check the "
                                         "status and arrange a resolution within 24 hours."}]},
    {"messages": [
        {"role": "system", "content": SEED_SYSTEM},
        {"role": "user", "content": "How do I return a defective product?"},
        {"role": "assistant", "content": "You can return defective products within 30 days for a full refund. Visit "
                                         "techcorp.com/returns or reply here with your order number and I will send "
                                         "a return label."}]},
]
MORE = [("Can I change my delivery address?", "Yes, if the order has not shipped. Reply with the new address."),
        ("Do you ship abroad?", "We ship to 30 countries; checkout shows whether yours is one of them."),
        ("My invoice shows the wrong address.", "Send me the order number and I will issue a corrected invoice."),
        ("How long does a refund take?", "Refunds reach your card 3 to 5 business days after we receive the item."),
        ("Is the warranty transferable?", "Yes, the warranty follows the product when you give or sell it."),
        ("Can I cancel my order?", "If it has not shipped, yes: reply with the order number and I will cancel it."),
        ("Where do I find my order number?", "It is in the confirmation email, starting with TC- and six digits."),
        ("Do you price match?", "We match the price of authorised retailers within 14 days of purchase."),
        ("The box arrived damaged.", "Sorry about that. Send a photo and the order number and I will replace it."),
        ("Can I pay in instalments?", "Yes, orders over $200 can be split into four payments at checkout.")]


def tunelab(*args):
    """The command, called in-process (what a subprocess would add is tested in tests/test_command_line.py)."""
    return run_cli(*map(str, args))


def raw_records():
    pairs = [(e["messages"][1]["content"], e["messages"][2]["content"]) for e in SEED_EXAMPLES] + MORE
    return [{"input": prompt, "ideal_output": reply} for prompt, reply in pairs]


def test_seed_records_convert_to_the_seed_chat_shape_and_validate(tmp_path):
    raw = tmp_path / "raw.csv"
    with raw.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["input", "ideal_output"])
        writer.writeheader()
        writer.writerows(raw_records())
    out = tmp_path / "training_data.jsonl"
    result = tunelab("data", "convert", raw, "--out", out, "--system", SEED_SYSTEM)
    assert result.returncode == 0, result.stderr.decode()
    lines = out.read_text().splitlines()
    assert [json.loads(line) for line in lines[:2]] == SEED_EXAMPLES
    assert list(json.loads(lines[0])) == ["messages"]
    assert [list(m) for m in json.loads(lines[0])["messages"]] == [["role", "content"]] * 3
    assert len(lines) == 12
    validation = tunelab("data", "validate", out, "--json", "--model", "none")
    assert validation.returncode == 0
    assert [f for f in json.loads(validation.stdout)["findings"] if f["severity"] == "error"] == []


def test_jsonl_with_other_column_names_and_dropped_rows(tmp_path):
    raw = tmp_path / "raw.jsonl"
    rows = [{"question": r["input"], "answer": r["ideal_output"]} for r in raw_records()]
    rows[3]["answer"] = "   "
    del rows[7]["question"]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    out = tmp_path / "out.jsonl"
    result = tunelab("data", "convert", raw, "--out", out, "--input-column", "question", "--output-column", "answer",
                     "--json")
    report = json.loads(result.stdout)
    assert report["format"] == "input-output" and report["written"] == 10
    assert report["dropped"] == [{"line": 4, "reason": "empty or missing `answer`"},
                                 {"line": 8, "reason": "empty or missing `question`"},
                                 {"line": 13, "reason": "not a JSON object (or not valid JSON)"}]
    assert json.loads(out.read_text().splitlines()[0])["messages"][0]["role"] == "user"  # no --system, none added


def test_alpaca_and_sharegpt(tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([
        {"instruction": "Summarise.", "input": "Long text here.", "output": "Short.", "system": "Be terse."},
        {"instruction": "Say hi.", "input": "", "output": "Hi.", "history": [["Before?", "Earlier answer."]]}]))
    out = tmp_path / "a.jsonl"
    assert tunelab("data", "convert", alpaca, "--out", out).returncode == 0
    first, second = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    assert first == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Summarise.\n\nLong text here."},
                     {"role": "assistant", "content": "Short."}]
    assert [m["role"] for m in second] == ["user", "assistant", "user", "assistant"]

    sharegpt = tmp_path / "sharegpt.jsonl"
    sharegpt.write_text(json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                                                      {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]})
                        + "\n" + json.dumps({"conversations": [{"from": "robot", "value": "?"}]}) + "\n")
    out = tmp_path / "s.jsonl"
    report = json.loads(tunelab("data", "convert", sharegpt, "--out", out, "--system", "S.", "--json").stdout)
    assert report["format"] == "sharegpt" and report["written"] == 1
    assert "speaker 'robot'" in report["dropped"][0]["reason"]
    assert [m["role"] for m in json.loads(out.read_text())["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_trl_prompt_completion_as_text_and_as_conversations(tmp_path):
    """TRL's prompt-completion data (and OpenAI's legacy completion files), found by `auto`."""
    text = tmp_path / "completions.csv"
    text.write_text('prompt,completion,tags\nDo you ship abroad?,"Yes, to 30 countries.","shipping, intl"\n'
                    "Where is my order?,\n")
    out = tmp_path / "t.jsonl"
    report = json.loads(tunelab("data", "convert", text, "--out", out, "--metadata-column", "tags", "--json").stdout)
    assert report["format"] == "trl" and report["written"] == 1
    assert report["dropped"] == [{"line": 3, "reason": "empty or missing `completion`"}]
    assert json.loads(out.read_text()) == {
        "messages": [{"role": "user", "content": "Do you ship abroad?"},
                     {"role": "assistant", "content": "Yes, to 30 countries."}],
        "metadata": {"tags": ["shipping", "intl"]}}

    conversations = tmp_path / "completions.jsonl"
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    conversations.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": prompt, "completion": [{"role": "assistant", "content": "Hello!"}]},
        {"prompt": prompt, "completion": [{"role": "user", "content": "Hello?"}]},
        {"prompt": prompt, "completion": "Hello!"}]))
    out = tmp_path / "c.jsonl"
    report = json.loads(tunelab("data", "convert", conversations, "--out", out, "--json").stdout)
    assert report["written"] == 1 and [d["line"] for d in report["dropped"]] == [2, 3]
    assert report["dropped"][0]["reason"].startswith("`completion` must be assistant messages")
    assert report["dropped"][1]["reason"].startswith("`prompt` and `completion` must both be text or both lists")
    assert json.loads(out.read_text())["messages"] == [*prompt, {"role": "assistant", "content": "Hello!"}]


def test_convert_refuses_unknown_shapes_and_existing_output(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"q": "a", "a": "b"}) + "\n")
    out = tmp_path / "out.jsonl"
    result = tunelab("data", "convert", raw, "--out", out)
    assert result.returncode == 1 and b"raw.jsonl:1: cannot tell the format" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    out.write_text("keep me\n")
    result = tunelab("data", "convert", raw, "--out", out, "--input-column", "q", "--output-column", "a")
    assert result.returncode == 1 and out.read_text() == "keep me\n"


def test_split_dedupes_and_keeps_prompts_on_one_side(tmp_path, support_conversations):
    conversations = [json.loads(json.dumps(c)) for c in support_conversations[:100]]
    conversations += conversations[:10]  # exact duplicates
    for conversation in conversations[20:30]:  # the same prompts again, with different answers
        copy = json.loads(json.dumps(conversation))
        copy["messages"][-1]["content"] += " Anything else I can help with?"
        conversations.append(copy)
    source = tmp_path / "all.jsonl"
    source.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    result = tunelab("data", "split", source, "--test-size", "0.2", "--out", tmp_path / "split", "--json")
    report = json.loads(result.stdout)
    assert report["duplicates_removed"] == 10
    train = [json.loads(line) for line in (tmp_path / "split" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "split" / "test.jsonl").read_text().splitlines()]
    assert len(train) + len(test) == 110 and 20 <= len(test) <= 24
    prompt = lambda c: json.dumps(c["messages"][:-1])  # noqa: E731
    assert not {prompt(c) for c in train} & {prompt(c) for c in test}
    again = tunelab("data", "split", source, "--out", tmp_path / "split")
    assert again.returncode == 1 and b"--force" in again.stderr  # nothing overwritten without asking
    tunelab("data", "split", source, "--test-size", "0.2", "--out", tmp_path / "same-seed")
    assert (tmp_path / "same-seed" / "test.jsonl").read_text() == (tmp_path / "split" / "test.jsonl").read_text()


def sharegpt_tool_record(index: int) -> dict:
    """LLaMA-Factory's ShareGPT tool format: function_call / observation turns and a `tools` JSON string."""
    return {
        "conversations": [
            {"from": "human", "value": f"What's the weather in city {index} and the time there?"},
            {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": {"city": f"c{index}"}},
                                                          {"name": "get_time", "arguments": {"city": f"c{index}"}}])},
            {"from": "observation", "value": json.dumps({"temperature": 20 + index % 10})},
            {"from": "observation", "value": json.dumps({"time": "14:00"})},
            {"from": "gpt", "value": f"It is {20 + index % 10} degrees and 14:00 in city {index}."},
            {"from": "human", "value": "And tomorrow?"},
            {"from": "function_call", "value": json.dumps({"name": "get_forecast",
                                                            "arguments": json.dumps({"city": f"c{index}", "days": 1})})},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "Sunny tomorrow."}],
        "system": "You are a weather assistant.",
        "tools": json.dumps([{"name": name, "description": f"{name} for a city",
                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
                             for name in ("get_weather", "get_time", "get_forecast")]),
    }


def test_sharegpt_tool_use_converts_into_tool_calls_with_tools_kept_and_validates(tmp_path):
    plain = {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello! How can I help?"}]}
    records = [sharegpt_tool_record(i) if i % 2 else dict(plain, conversations=[
        {"from": "human", "value": f"Hi number {i}"}, {"from": "gpt", "value": f"Hello {i}, how can I help?"}])
        for i in range(300)]
    source = tmp_path / "glaive.json"
    source.write_text(json.dumps(records, indent=1))
    out = tmp_path / "out.jsonl"
    report = json.loads(tunelab("data", "convert", source, "--out", out, "--json").stdout)
    assert report["format"] == "sharegpt" and report["written"] == 300
    assert report["dropped"] == [] and report["not_carried"] == []
    converted = [json.loads(line) for line in out.read_text().splitlines()]
    first = converted[1]
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather", "get_time", "get_forecast"]
    assert first["tools"][0]["type"] == "function"
    roles = [m["role"] for m in first["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "assistant", "user", "assistant", "tool", "assistant"]
    calls = first["messages"][2]["tool_calls"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("call_0", "get_weather", {"city": "c1"}), ("call_1", "get_time", {"city": "c1"})]
    assert [m["tool_call_id"] for m in first["messages"] if m["role"] == "tool"] == ["call_0", "call_1", "call_2"]
    assert json.loads(first["messages"][7]["tool_calls"][0]["function"]["arguments"]) == {"city": "c1", "days": 1}
    validation = tunelab("data", "validate", out, "--json", "--model", "none")
    assert [f for f in json.loads(validation.stdout)["findings"] if f["severity"] == "error"] == []


def test_what_cannot_be_carried_is_reported_by_reason_and_file_line(tmp_path):
    records = [
        {"conversations": [{"from": "human", "value": "Describe <image>"}, {"from": "gpt", "value": "A red lamp."}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there!"}], "id": "x1"},
        {"conversations": [{"from": "narrator", "value": "Once"}, {"from": "gpt", "value": "upon a time."}]},
        {"conversations": [{"from": "human", "value": "Look"}, {"from": "gpt", "value": "I see it."}], "images": ["a.png"]},
    ]
    source = tmp_path / "mixed.json"
    source.write_text(json.dumps(records, indent=2))  # pretty-printed: each record starts on its own line
    starts = [n for n, line in enumerate(source.read_text().splitlines(), start=1) if line == "  {"]
    report = json.loads(tunelab("data", "convert", source, "--out", tmp_path / "o.jsonl", "--json").stdout)
    assert report["written"] == 1
    assert [(d["line"], d["reason"].split(":")[0]) for d in report["dropped"]] == [
        (starts[0], "conversations[0]"), (starts[2], "conversations[0]"), (starts[3], "has images")]
    assert "<image>" in report["dropped"][0]["reason"] and "'narrator'" in report["dropped"][1]["reason"]
    assert report["not_carried"] == [{"line": starts[1], "what": "field `id`"}]

    table = tmp_path / "raw.csv"
    table.write_text("input,ideal_output,notes\nWhere is it?,It ships today.,vip\nHi,Hello there.,\n"
                     "Refund?,Within 30 days.,late,extra\n")
    shown = tunelab("data", "convert", table, "--out", tmp_path / "t.jsonl")
    assert shown.returncode == 0
    stdout = shown.stdout.decode()
    assert "not carried ×2 (lines 2, 4): column `notes`" in " ".join(stdout.split())
    assert "not carried ×1 (line 4): values past the last CSV column" in " ".join(stdout.split())


def test_openai_records_are_validated_and_a_failed_conversion_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                    {"role": "assistant", "content": ""}]}) + "\n" for i in range(500)))
    out = tmp_path / "out.jsonl"
    for flags in ([], ["--format", "openai"]):
        result = tunelab("data", "convert", bad, "--out", out, *flags)
        stderr = " ".join((result.stdout + result.stderr).decode().split())  # the report, then the error
        assert result.returncode == 1
        assert "nothing written, 500 dropped" in stderr and "messages[1].content: is an empty string" in stderr
        assert "next:" not in stderr and "was not written" in stderr
        assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_one_json_object_is_one_record(tmp_path):
    source = tmp_path / "one.json"
    source.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi there."}, indent=2))
    out = tmp_path / "o.jsonl"
    result = tunelab("data", "convert", source, "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["messages"][-1] == {"role": "assistant", "content": "Hi there."}
