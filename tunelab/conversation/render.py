"""Conversation → token ids + labels. The loss mask lives here and nowhere else.

What is trained on: every assistant message (all turns of a multi-turn thread), from the first token of
its content through the end-of-turn marker, so the model learns to stop. An assistant message that calls
tools is trained on its calls (function names and JSON arguments) the same way. An assistant message with
`"weight": 0` is rendered (the model sees it as context) but not trained on. Everything else — system,
user, tool messages, the tool list, the template's role headers — has label -100.

Conversations are OpenAI's format; what templates are given is the same data in the shape Hugging Face
chat templates expect (`template_messages`): the `developer` role as `system`, text parts joined, tool
call arguments as objects rather than JSON strings, and the conversation's `tools` passed as `tools=`.

How: the chat template renders the whole conversation once. For each assistant message we render the
conversation up to it with `add_generation_prompt=True` (exactly the prompt inference will see) and up to
and including it; the characters between the two are that message's span. The full text is tokenized
once with character offsets, and a token carries loss when it starts inside a trained span. Because spans
come from the same template inference uses, training and inference cannot disagree on the prompt; if a
template renders a prefix differently from the whole (some do), we raise instead of training on a
silently wrong mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.conversation.schema import content_text

IGNORE_INDEX = -100


@dataclass
class RenderedExample:
    """Token ids and labels (-100 where no loss) for one conversation."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


class TemplateMismatch(ValueError):
    """The chat template renders a conversation's prefix differently from the conversation itself."""


def template_message(message: dict) -> dict:
    """One OpenAI message as chat templates expect it (see the module docstring)."""
    import json

    shaped = {key: value for key, value in message.items() if key != "weight"}  # ours, not the template's
    if shaped.get("role") == "developer":
        shaped["role"] = "system"
    if isinstance(shaped.get("content"), list):
        shaped["content"] = content_text(shaped["content"])
    if shaped.get("tool_calls"):
        shaped["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": json.loads(call["function"]["arguments"])}}
            if isinstance(call.get("function", {}).get("arguments"), str) else call
            for call in shaped["tool_calls"]]
    return shaped


def render_text(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                tools: list[dict] | None = None) -> str:
    """The chat template's text for these messages (and the conversation's tools, if any)."""
    if not messages and add_generation_prompt:
        return _opening_prompt(tokenizer, tools)
    return tokenizer.apply_chat_template(
        [template_message(m) for m in messages], tools=tools or None, tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


_REPLY_MARKER = "\ue000reply\ue001"


def _opening_prompt(tokenizer, tools) -> str:
    """The prompt before a reply that opens the conversation (nothing before it to render): what the
    template writes before the reply's text when the reply is the only message."""
    text = tokenizer.apply_chat_template([{"role": "assistant", "content": _REPLY_MARKER}], tools=tools or None,
                                         tokenize=False)
    if _REPLY_MARKER not in text:
        raise TemplateMismatch("the chat template cannot render a conversation that opens with the assistant's "
                               "reply; start it with a user (or system) message")
    return text[:text.index(_REPLY_MARKER)]


def trained_character_spans(tokenizer, messages: list[dict],
                            tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the (start, end) character spans that carry loss."""
    full_text = render_text(tokenizer, messages, tools=tools)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = render_text(tokenizer, messages[:index], add_generation_prompt=True, tools=tools)
        through_reply = render_text(tokenizer, messages[: index + 1], tools=tools)
        if not full_text.startswith(through_reply) or not through_reply.startswith(prompt):
            raise TemplateMismatch(
                f"the chat template renders messages[{index}] differently as a prompt prefix than inside "
                "the whole conversation, so the loss mask cannot be placed safely"
            )
        spans.append((len(prompt), len(through_reply)))
    return full_text, spans


def render_conversation(tokenizer, messages: list[dict], max_length: int | None = None,
                        tools: list[dict] | None = None) -> RenderedExample:
    """Token ids and labels for one conversation, truncated to `max_length` tokens if given."""
    text, spans = trained_character_spans(tokenizer, messages, tools)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for position in trained_positions(encoding["offset_mapping"], spans):
        labels[position] = input_ids[position]
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return RenderedExample(input_ids, labels)


def trained_positions(offsets, spans: list[tuple[int, int]]) -> list[int]:
    """Indexes of the tokens that carry loss: those starting inside a trained character span."""
    positions, span_index = [], 0
    for position, (start, end) in enumerate(offsets):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        if end > start and start >= spans[span_index][0]:
            positions.append(position)
    return positions


def render_prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Token ids of the prompt for generating the next assistant message."""
    text = render_text(tokenizer, messages, add_generation_prompt=True, tools=tools)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_numbered(tokenizer, numbered_conversations: list[tuple[int, dict]], path) -> list[RenderedExample]:
    """Every conversation rendered whole (untruncated); a template that cannot place the mask names file:line."""
    examples = []
    for line, conversation in numbered_conversations:
        try:
            examples.append(render_conversation(tokenizer, conversation["messages"], tools=conversation.get("tools")))
        except TemplateMismatch as error:
            raise TemplateMismatch(f"{path}:{line}: {error}") from None
    return examples


def check_template_agreement(tokenizer, numbered_conversations: list[tuple[int, dict]], path,
                             rendered: list[RenderedExample] | None = None) -> int:
    """Check that what inference sends is, token for token, what training trained after.

    For every trained assistant turn, the prompt inference renders (the conversation so far with the
    generation prompt) is tokenized on its own, as `chat`, `eval` and `serve` do, and must equal the first
    tokens of the training example. Raises TemplateMismatch naming the file, line and message otherwise.
    Returns the number of turns checked.

    Every conversation is checked, not a sample: whether a reply merges with the template's header depends
    on that reply's own first characters (a leading space or punctuation), so one bad line anywhere counts.
    `rendered`: the conversations' examples from `render_numbered`, when the caller has them already.
    """
    if rendered is None:
        rendered = render_numbered(tokenizer, numbered_conversations, path)
    checked = 0
    for (line, conversation), example in zip(numbered_conversations, rendered, strict=True):
        messages = conversation["messages"]
        training_ids = example.input_ids
        assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1) != 0]
        for index in assistant_turns:
            prompt_ids = render_prompt_ids(tokenizer, messages[:index], conversation.get("tools"))
            if training_ids[:len(prompt_ids)] != prompt_ids:
                at = next((k for k, (a, b) in enumerate(zip(prompt_ids, training_ids)) if a != b),
                          min(len(prompt_ids), len(training_ids)))
                shown = lambda ids: repr(tokenizer.decode(ids[max(0, at - 3):at + 3]))  # noqa: E731
                raise TemplateMismatch(
                    f"{path}:{line}: messages[{index}]: the prompt sent at inference tokenizes differently from the "
                    f"same text inside the training example (from token {at}: inference {shown(prompt_ids)}, "
                    f"training {shown(training_ids)}), so the model would be trained after tokens it never sees "
                    "when answering. Usually a reply starting with whitespace or punctuation that merges with the "
                    "template's header; strip it, or use a template that ends its header with a special token.")
            checked += 1
    return checked


def trained_runs(tokenizer, example: RenderedExample) -> list[tuple[bool, str]]:
    """The example's text in runs of (trained?, text): what `tunelab data render` shows, in colour or not."""
    runs: list[tuple[bool, list[int]]] = []
    for token_id, label in zip(example.input_ids, example.labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token_id)
        else:
            runs.append((trained, [token_id]))
    return [(trained, tokenizer.decode(ids)) for trained, ids in runs]


def trained_view(tokenizer, line: int, conversation: dict) -> dict:
    """One example of a file as `tunelab data render --json` and the dashboard show it: its token counts
    and its text in runs of trained and untrained text. TemplateMismatch as render_conversation."""
    example = render_conversation(tokenizer, conversation["messages"], tools=conversation.get("tools"))
    return {"line": line, "tokens": len(example.input_ids), "trained_tokens": example.trained_tokens,
            "runs": [{"trained": trained, "text": text} for trained, text in trained_runs(tokenizer, example)]}


def show_mask(tokenizer, example: RenderedExample) -> str:
    """A plain view of which tokens are trained: trained runs wrapped in ⟦ ⟧ (for tools and plain terminals)."""
    return "".join(f"⟦{text}⟧" if trained else text for trained, text in trained_runs(tokenizer, example))
