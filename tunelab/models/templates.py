"""Chat templates: how a conversation becomes text, and which tokens end an assistant turn.

The embedded default (Gemma 3 270M from a GGUF) ships no chat template, so we supply Gemma's turn format.
The same template string is saved with every run's tokenizer, so chat, eval, serve and export render
exactly what training rendered — the most common complaint in this field is a template that differs
between training and inference.
"""

from __future__ import annotations

# Gemma's turn format. Gemma has no system role: a system prompt is folded into the first user turn,
# separated by a blank line, as Google's own template does.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_text = messages[0]['content'] ~ '\n\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_text = '' -%}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = 'user' -%}{%- endif -%}"
    "{{ '<start_of_turn>' ~ role ~ '\n' }}"
    "{%- if loop.first and system_text -%}{{ system_text }}{%- endif -%}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Token strings that end an assistant turn in the common template families (Gemma, Llama 3, ChatML,
# Phi). Generation stops on whichever of them the tokenizer knows, plus its EOS.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>")


def end_of_turn_token_ids(tokenizer) -> list[int]:
    """Ids that mean "the assistant is done": the tokenizer's EOS plus the template's end-of-turn token."""
    ids = []
    vocab = tokenizer.get_vocab()
    for token in (*END_OF_TURN_TOKENS, tokenizer.eos_token):
        token_id = vocab.get(token) if token else None
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return ids


def ensure_chat_template(tokenizer) -> None:
    """Give a tokenizer without a chat template Gemma's, which is what the embedded default needs."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
