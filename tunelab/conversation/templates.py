"""Chat templates: how a conversation becomes text, which tokens end an assistant turn, and tool calls.

The embedded default (Gemma 3 270M from a GGUF) ships no chat template, so we supply Gemma's turn format
when converting it, and only for a vocabulary that has Gemma's turn tokens. Any other model must bring its
own template or be given one (`--chat-template FILE`): another vocabulary would see Gemma's markers as
plain text and never stop on them. The template a run trained with is saved with its tokenizer, so chat,
eval, serve and export render exactly what training rendered — the most common complaint in this field
is a template that differs between training and inference.

Tool calling in Gemma's format. Gemma 3's own template has no tools, so ours uses one documented format,
the same in training and at inference, which `parse_tool_calls` reads back into OpenAI's `tool_calls`:

- the tools (OpenAI's `tools` list) are described at the start of the first user turn, after the system
  prompt: one line of instruction, then `<tools>`, one JSON object per tool per line, `</tools>`;
- an assistant tool call is `<tool_call>{"name": "…", "arguments": {…}}</tool_call>` (one block per call,
  after any text), in the model's turn;
- tool results are a user turn holding `<tool_response>…</tool_response>` for each consecutive `tool`
  message, in order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

TOOL_INSTRUCTION = ("You can call these functions. To call one, answer with "
                    '<tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>, '
                    "one block per call.")

# Gemma's turn format. Gemma has no system role: a system prompt (and the tool list) is folded into the
# first user turn, separated by a blank line, as Google's own template does. `content` may be a string or
# absent (a pure tool call); the renderer has already joined text parts and turned arguments into objects.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_text = messages[0]['content'] ~ '\n\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_text = '' -%}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{%- set tool_lines = namespace(text='" + TOOL_INSTRUCTION + "\n<tools>\n') -%}"
    "{%- for tool in tools -%}{%- set tool_lines.text = tool_lines.text ~ (tool | tojson) ~ '\n' -%}{%- endfor -%}"
    "{%- set system_text = system_text ~ tool_lines.text ~ '</tools>\n\n' -%}"
    "{%- endif -%}"
    # No user turn to fold the system prompt into (the conversation opens with a reply or a tool result):
    # it gets a user turn of its own, so it is never part of a trained reply.
    "{%- if system_text and not (turns and turns[0]['role'] == 'user') -%}"
    "{{ '<start_of_turn>user\n' ~ (system_text | trim) ~ '<end_of_turn>\n' }}"
    "{%- set system_text = '' -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' -%}{{ '<start_of_turn>user\n' }}"
    "{%- if loop.first and system_text -%}{{ system_text }}{%- endif -%}"
    "{%- else -%}{{ '\n' }}{%- endif -%}"
    "{{ '<tool_response>' ~ (message['content'] | trim) ~ '</tool_response>' }}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' -%}{{ '<end_of_turn>\n' }}{%- endif -%}"
    "{%- else -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = 'user' -%}{%- endif -%}"
    "{{ '<start_of_turn>' ~ role ~ '\n' }}"
    "{%- if loop.first and system_text -%}{{ system_text }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- endif -%}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- if not loop.first or (message['content'] is string and message['content'] | trim) -%}{{ '\n' }}{%- endif -%}"
    "{{ '<tool_call>' ~ ({'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson)"
    " ~ '</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

GEMMA_TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")


class MissingChatTemplate(ValueError):
    """A model with no chat template of its own, and none given."""


def has_gemma_turn_tokens(tokenizer) -> bool:
    """Does this vocabulary have Gemma's turn markers as single tokens (so Gemma's format is its own)?"""
    vocabulary = tokenizer.get_vocab()
    return all(token in vocabulary for token in GEMMA_TURN_TOKENS)


def require_chat_template(tokenizer, source: str, template_file: str | None = None) -> None:
    """Give the tokenizer the template in `template_file`, or check it has one of its own.

    Raises MissingChatTemplate naming `source` when there is neither: a guessed template (another model
    family's turn markers) would train a model that never stops.
    """
    if template_file:
        from pathlib import Path

        path = Path(template_file)
        if not path.is_file():
            raise MissingChatTemplate(f"--chat-template {template_file}: no such file")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
        return
    if not getattr(tokenizer, "chat_template", None):
        raise MissingChatTemplate(
            f"{source}: the model has no chat template, so tunelab cannot tell how it marks turns; pass "
            "--chat-template FILE (a Jinja chat template, as in a tokenizer_config.json) — it is saved with the "
            "run, so chat, eval and serve render exactly what training did")


def end_of_turn_token(tokenizer) -> int | None:
    """The token the chat template writes right after an assistant reply (e.g. Gemma's `<end_of_turn>`,
    Llama 3's `<|eot_id|>`, ChatML's `<|im_end|>`), found by rendering a reply; None if it writes none."""
    marker = "\ue000reply\ue001"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    after = text[text.index(marker) + len(marker):] if marker in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return ids[0] if ids and ids[0] in special else None


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Ids that end an assistant reply: the model's `generation_config` EOS ids, the template's end-of-turn
    token, and the tokenizer's EOS."""
    ids: list[int] = []
    configured = getattr(generation_config, "eos_token_id", None)
    candidates = [*(configured if isinstance(configured, list) else [configured]), end_of_turn_token(tokenizer),
                  tokenizer.eos_token_id]
    for token_id in candidates:
        if isinstance(token_id, int) and token_id not in ids:
            ids.append(token_id)
    return ids


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass
class ParsedReply:
    """A generated reply split into its text and OpenAI-shaped `tool_calls` (empty when it made none)."""

    content: str | None
    tool_calls: list[dict]


def parse_tool_calls(text: str, call_id_prefix: str = "call_") -> ParsedReply:
    """Read `<tool_call>{"name", "arguments"}</tool_call>` blocks back into OpenAI's `tool_calls`.

    A block that is not a JSON object with a string `name` stays part of the text: the model wrote
    something that is not a valid call, and the caller should see it as it was written.
    """
    calls, kept, position = [], [], 0
    for match in _TOOL_CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        arguments = call.get("arguments", {})
        kept.append(text[position:match.start()])
        position = match.end()
        calls.append({"id": f"{call_id_prefix}{len(calls)}", "type": "function",
                      "function": {"name": call["name"],
                                   "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    kept.append(text[position:])
    content = "".join(kept).strip()
    return ParsedReply(content or None if calls else content, calls)
