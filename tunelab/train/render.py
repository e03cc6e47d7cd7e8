"""Conversation → token ids + labels. The loss mask lives here and nowhere else.

What is trained on: every assistant message (all turns of a multi-turn thread), from the first token of
its content through the end-of-turn marker, so the model learns to stop. An assistant message with
`"weight": 0` is rendered (the model sees it as context) but not trained on. Everything else — system,
user, tool messages, the template's role headers — has label -100.

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


def _template_messages(messages: list[dict]) -> list[dict]:
    # Templates know role and content; our own keys (weight) must not leak into the rendered text.
    return [{key: value for key, value in m.items() if key != "weight"} for m in messages]


def render_text(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template's text for these messages."""
    return tokenizer.apply_chat_template(
        _template_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def trained_character_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the (start, end) character spans that carry loss."""
    full_text = render_text(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = render_text(tokenizer, messages[:index], add_generation_prompt=True)
        through_reply = render_text(tokenizer, messages[: index + 1])
        if not full_text.startswith(through_reply) or not through_reply.startswith(prompt):
            raise TemplateMismatch(
                f"the chat template renders messages[{index}] differently as a prompt prefix than inside "
                "the whole conversation, so the loss mask cannot be placed safely"
            )
        spans.append((len(prompt), len(through_reply)))
    return full_text, spans


def render_conversation(tokenizer, messages: list[dict], max_length: int | None = None) -> RenderedExample:
    """Token ids and labels for one conversation, truncated to `max_length` tokens if given."""
    text, spans = trained_character_spans(tokenizer, messages)
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


def render_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the prompt for generating the next assistant message."""
    text = render_text(tokenizer, messages, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def show_mask(tokenizer, example: RenderedExample) -> str:
    """A rich-markup view of a rendered example: trained tokens green, context dim."""
    from rich.markup import escape

    pieces = []
    for token_id, label in zip(example.input_ids, example.labels):
        piece = escape(tokenizer.decode([token_id]))
        pieces.append(f"[bold green]{piece}[/]" if label != IGNORE_INDEX else f"[dim]{piece}[/]")
    return "".join(pieces)
