"""`tunelab data convert` and `tunelab data split`, through the real commands."""

import csv
import json
import subprocess
import sys

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
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *map(str, args)], capture_output=True, timeout=300)


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
    result = tunelab("data", "split", source, "--test-size", "0.2", "--out-dir", tmp_path / "split", "--json")
    report = json.loads(result.stdout)
    assert report["duplicates_removed"] == 10
    train = [json.loads(line) for line in (tmp_path / "split" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "split" / "test.jsonl").read_text().splitlines()]
    assert len(train) + len(test) == 110 and 20 <= len(test) <= 24
    prompt = lambda c: json.dumps(c["messages"][:-1])  # noqa: E731
    assert not {prompt(c) for c in train} & {prompt(c) for c in test}
    again = tunelab("data", "split", source, "--out-dir", tmp_path / "split")
    assert again.returncode == 1 and b"--force" in again.stderr  # nothing overwritten without asking
    tunelab("data", "split", source, "--test-size", "0.2", "--out-dir", tmp_path / "same-seed")
    assert (tmp_path / "same-seed" / "test.jsonl").read_text() == (tmp_path / "split" / "test.jsonl").read_text()
