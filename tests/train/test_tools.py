"""Tool calling trains for real: tools, assistant tool calls and tool results are rendered, the calls are
trained on, `data render` shows them, the template check covers them, and replies parse back into calls."""

import json

import pytest

from tests.conftest import run_cli
from tunelab.conversation.render import IGNORE_INDEX, check_template_agreement, render_conversation
from tunelab.conversation.templates import GEMMA_CHAT_TEMPLATE, parse_tool_calls
from tunelab.core.settings import TrainConfig

TOOLS = [
    {"type": "function", "function": {
        "name": "get_order_status", "description": "Look up where an order is.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {
        "name": "schedule_pickup", "description": "Book a courier to collect a return.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}, "date": {"type": "string"}},
                       "required": ["order_id", "date"]}}},
    {"type": "function", "function": {
        "name": "search_products", "description": "Search the catalogue.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "max_price": {"type": "number"}},
                       "required": ["query"]}}},
]


def call(call_id: str, name: str, **arguments) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def tool_conversations(count: int = 12) -> list[dict]:
    """Multi-turn support conversations in OpenAI's tool format: calls with JSON arguments, tool results,
    a turn with two parallel calls, and a final text reply."""
    conversations = []
    for index in range(count):
        order = f"BL-{4100 + index}"
        messages = [
            {"role": "system", "content": "You are Brightlane Home's support assistant."},
            {"role": "user", "content": f"Where is my order {order}? And can you pick up the lamp from it on Friday?"},
            {"role": "assistant", "content": None, "tool_calls": [
                call(f"c{index}a", "get_order_status", order_id=order),
                call(f"c{index}b", "schedule_pickup", order_id=order, date=f"2026-12-{10 + index % 9:02d}")]},
            {"role": "tool", "tool_call_id": f"c{index}a", "content": json.dumps({"status": "in transit", "eta": "Tuesday"})},
            {"role": "tool", "tool_call_id": f"c{index}b", "content": json.dumps({"booked": True})},
            {"role": "assistant", "content": f"Order {order} is in transit and arrives Tuesday; the pickup is booked."},
            {"role": "user", "content": f"Great. Any reading lamps under {20 + index} dollars?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                call(f"c{index}c", "search_products", query="reading lamp", max_price=20 + index)]},
            {"role": "tool", "tool_call_id": f"c{index}c", "content": json.dumps([{"name": "Arc lamp", "price": 19}])},
            {"role": "assistant", "content": "The Arc lamp is 19 dollars and in stock."},
        ]
        conversations.append({"messages": messages, "tools": TOOLS})
    return conversations


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


def context_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX])


def test_tool_calls_are_rendered_and_trained_and_the_rest_is_context(tiny_tokenizer):
    conversation = tool_conversations(1)[0]
    example = render_conversation(tiny_tokenizer, conversation["messages"], tools=conversation["tools"])
    trained, context = trained_text(tiny_tokenizer, example), context_text(tiny_tokenizer, example)
    # The calls are trained: function names and their JSON arguments, as objects (not re-quoted strings).
    assert '<tool_call>{"name": "get_order_status", "arguments": {"order_id": "BL-4100"}}</tool_call>' in trained
    assert '"name": "schedule_pickup", "arguments": {"order_id": "BL-4100", "date": "2026-12-10"}' in trained
    assert 'Let me look.\n<tool_call>{"name": "search_products", "arguments": {"query": "reading lamp", ' \
           '"max_price": 20}}</tool_call>' in trained
    assert trained.count("<end_of_turn>") == 4  # every assistant turn, calls included, learns to stop
    # The tool list and the tool results are context: seen, never trained.
    assert '"name": "search_products", "description": "Search the catalogue."' in context
    assert '<tool_response>{"status": "in transit", "eta": "Tuesday"}</tool_response>\n<tool_response>' in context
    assert "tool_response" not in trained and "description" not in trained


def test_a_tool_call_reply_parses_back_into_openai_tool_calls(tiny_tokenizer):
    conversation = tool_conversations(1)[0]
    messages = conversation["messages"]
    prompt = tiny_tokenizer.apply_chat_template(messages[:7], tools=TOOLS, tokenize=False, add_generation_prompt=True)
    whole = tiny_tokenizer.apply_chat_template(messages[:8], tools=TOOLS, tokenize=False)
    reply = whole[len(prompt):].removesuffix("<end_of_turn>\n")
    parsed = parse_tool_calls(reply)
    assert parsed.content == "Let me look."
    assert [c["function"]["name"] for c in parsed.tool_calls] == ["search_products"]
    assert json.loads(parsed.tool_calls[0]["function"]["arguments"]) == {"query": "reading lamp", "max_price": 20}
    assert parse_tool_calls("<tool_call>not json</tool_call>").tool_calls == []  # left as text, not guessed
    only_calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert only_calls.content is None and only_calls.tool_calls[0]["function"]["arguments"] == "{}"


def test_the_template_check_covers_tool_call_turns(tiny_tokenizer):
    numbered = list(enumerate(tool_conversations(3), start=1))
    assert check_template_agreement(tiny_tokenizer, numbered, "tools.jsonl") == 3 * 4  # 4 assistant turns each


def test_a_model_s_own_template_gets_tools_and_argument_objects(tiny_tokenizer):
    """Templates with tool support (Qwen, Llama 3.1, …) expect `tools=` and arguments as objects."""
    import copy

    own = copy.deepcopy(tiny_tokenizer)
    own.chat_template = (
        "{% if tools %}TOOLS {{ tools | map(attribute='function') | map(attribute='name') | join(',') }}\n{% endif %}"
        "{% for m in messages %}<start_of_turn>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
        "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}")
    conversation = tool_conversations(1)[0]
    example = render_conversation(own, conversation["messages"], tools=conversation["tools"])
    text = own.decode(example.input_ids)
    assert text.startswith("TOOLS get_order_status,schedule_pickup,search_products")
    assert 'CALL get_order_status {"order_id": "BL-4100"}' in trained_text(own, example)


@pytest.mark.slow
def test_tool_calling_data_validates_trains_and_renders(tmp_path, tiny_model_dir):
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in tool_conversations(12)))
    validate = run_cli("data", "validate", str(data), "--model", str(tiny_model_dir))
    assert validate.returncode == 0, validate.stderr
    assert b"0 error(s)" in validate.stdout

    from tunelab.train.local import train

    run_dir = train(TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "run"), n_epochs=2,
                                batch_size=4, learning_rate_multiplier=25, dtype="fp32"))
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(row.split(",")[1]) for row in rows]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (run_dir / "tokenizer" / "chat_template.jinja").read_text() == GEMMA_CHAT_TEMPLATE  # tools format kept

    shown = run_cli("data", "render", str(data), "--model", str(run_dir), "--limit", "1", "--plain")
    assert shown.returncode == 0, shown.stderr
    assert '⟦<tool_call>{"name": "get_order_status", "arguments": {"order_id": "BL-4100"}}</tool_call>' in \
        shown.stdout.decode()


@pytest.mark.parametrize("arguments", ['"just a string"', "[1, 2]", "{not json"])
def test_tool_call_arguments_that_are_not_an_object_are_refused_with_what_was_found(tmp_path, arguments):
    from tunelab.conversation.schema import example_problems

    conversation = tool_conversations(1)[0]
    conversation["messages"][2]["tool_calls"][0]["function"]["arguments"] = arguments
    errors = example_problems(conversation)
    assert [problem.code for problem in errors] == ["invalid_tool_arguments"]
    assert errors[0].path == "messages[2].tool_calls[0].function.arguments"


def test_a_system_prompt_is_never_trained_even_when_no_user_turn_follows(tiny_tokenizer):
    messages = [{"role": "system", "content": "House rules."}, {"role": "assistant", "content": "Welcome to Brightlane!"}]
    example = render_conversation(tiny_tokenizer, messages)
    assert "House rules." in context_text(tiny_tokenizer, example)
    assert trained_text(tiny_tokenizer, example) == "Welcome to Brightlane!<end_of_turn>\n"
    opening = render_conversation(tiny_tokenizer, [{"role": "assistant", "content": "Hello, how can I help?"}])
    assert trained_text(tiny_tokenizer, opening) == "Hello, how can I help?<end_of_turn>\n"
