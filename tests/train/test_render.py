"""Exactly which tokens carry loss: every assistant turn (content + end-of-turn), nothing else."""

from tunelab.cli.console import mask_markup
from tunelab.conversation.render import (IGNORE_INDEX, TemplateMismatch, render_conversation, render_prompt_ids,
                                         trained_runs)

from tests.conftest import SYSTEM


def trained_text(tokenizer, example) -> list[str]:
    """The trained tokens decoded, grouped into contiguous runs."""
    runs, current = [], []
    for token_id, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            assert label == token_id  # labels are the tokens themselves; the shift happens in the loss
            current.append(token_id)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_single_turn_trains_only_the_reply_and_its_end_of_turn(tiny_tokenizer):
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "Hi there,\n\nIt ships within 2 business days."},
    ]
    example = render_conversation(tiny_tokenizer, messages)
    assert trained_text(tiny_tokenizer, example) == ["Hi there,\n\nIt ships within 2 business days.<end_of_turn>\n"]
    # The system prompt and user text are context only.
    context = tiny_tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l == IGNORE_INDEX])
    assert SYSTEM in context and "Where is my order?" in context and "It ships" not in context


def test_every_assistant_turn_of_a_thread_is_trained(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "My lamp is broken."},
        {"role": "assistant", "content": "Could you send the order number?"},
        {"role": "user", "content": "BL-123456"},
        {"role": "assistant", "content": "Thanks, a replacement ships in 2 days."},
    ]
    runs = trained_text(tiny_tokenizer, render_conversation(tiny_tokenizer, messages))
    assert runs == ["Could you send the order number?<end_of_turn>\n",
                    "Thanks, a replacement ships in 2 days.<end_of_turn>\n"]


def test_weight_zero_turn_is_context_not_target(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bad old answer.", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Good answer.", "weight": 1},
    ]
    example = render_conversation(tiny_tokenizer, messages)
    assert trained_text(tiny_tokenizer, example) == ["Good answer.<end_of_turn>\n"]
    assert "Bad old answer." in tiny_tokenizer.decode(example.input_ids)  # still seen as context


def test_training_prefix_is_exactly_the_inference_prompt(tiny_tokenizer):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}]
    example = render_conversation(tiny_tokenizer, messages)
    prompt = render_prompt_ids(tiny_tokenizer, messages[:-1])
    first_trained = next(i for i, l in enumerate(example.labels) if l != IGNORE_INDEX)
    assert example.input_ids[:first_trained] == prompt


def test_a_template_that_renders_prefixes_differently_is_refused(tiny_tokenizer):
    import copy

    import pytest

    odd = copy.copy(tiny_tokenizer)
    # A template that numbers turns from the end renders a prefix differently from the whole.
    odd.chat_template = "{% for m in messages %}{{ (messages|length - loop.index)|string + m['content'] }}{% endfor %}"
    with pytest.raises(TemplateMismatch):
        render_conversation(odd, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_mask_view_marks_trained_tokens_green(tiny_tokenizer):
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Done."}]
    view = mask_markup(trained_runs(tiny_tokenizer, render_conversation(tiny_tokenizer, messages)))
    assert "[bold green]" in view and "[dim]" in view
    trained = "".join(piece.split("[/]")[0] for piece in view.split("[bold green]")[1:])
    assert trained == "Done.<end_of_turn>\n"
