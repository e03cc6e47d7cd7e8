"""Held-out examples as the evaluation sees them: a prompt, the reference reply, tools, and slice tags.

Each held-out conversation's last assistant message is the reference; everything before it is the prompt.
Tags come from `metadata.tags` on the line (a list of strings, or one string) or, with `--slice-by FIELD`,
from that field of the line's `metadata` (or of the line itself), so results can be read per slice — edge
cases measured on their own.

Few-shot prompting puts K training examples before each prompt as earlier user/assistant turns (the
"try prompts first" baseline). The shots are the same K for every prompt, drawn with a fixed seed, so the
baseline is one fixed prompt a user could have written; a prompt's own system message stays first.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.conversation.reader import (is_preference_file, is_task_file, read_numbered_conversations,
                                         read_numbered_pairs, read_numbered_tasks, split_prompt_and_reply)
from tunelab.conversation.reinforcement import PROMPT_KEYS
from tunelab.conversation.schema import content_text, last_assistant_index


@dataclass
class Item:
    """One held-out example."""

    line: int  # in the held-out file, for reports and error messages
    prompt: list[dict]
    reference: str  # the reference reply's text, tool calls written as name(arguments)
    reference_content: str  # its text alone
    reference_calls: list[tuple[str, object]]  # (function name, parsed arguments)
    tools: list[dict] | None = None
    tags: list[str] = field(default_factory=list)
    fields: dict = field(default_factory=dict)  # what a grader reads as {{item.…}}


def read_items(path: str | Path, slice_by: str | None = None, limit: int | None = None) -> list[Item]:
    """The held-out examples of a chat JSONL file (DataError naming lines and fields if it is not valid). From a
    file of preference pairs: each pair's input, with its preferred output as the reference reply. From a file
    of reinforcement tasks: each prompt, with no reference reply, its other keys for a grader (`--grader`).

    A grader reads a task's keys as `{{item.KEY}}`; for a chat example, the line's keys other than its
    messages and tools, and `reference`: the reference reply's text."""
    if is_task_file(path):
        return [Item(line, task.messages, "", "", [], task.tools, _tags(task.item, slice_by, path, line), task.item)
                for line, task in read_numbered_tasks(path)[:limit]]
    if is_preference_file(path):
        return [Item(line, pair.messages, pair.preferred, pair.preferred, [], pair.tools,
                     _tags({"metadata": pair.metadata}, slice_by, path, line)) for line, pair in read_numbered_pairs(path)[:limit]]
    items = []
    for line, conversation in read_numbered_conversations(path)[:limit]:
        prompt, reference = split_prompt_and_reply(conversation)
        reply = conversation["messages"][last_assistant_index(conversation["messages"])]
        calls = [(c["function"]["name"], _arguments(c["function"].get("arguments"))) for c in reply.get("tool_calls") or []]
        fields = {key: value for key, value in conversation.items() if key not in PROMPT_KEYS} | {"reference": reference}
        items.append(Item(line, prompt, reference, content_text(reply.get("content")) or "", calls,
                          conversation.get("tools"), _tags(conversation, slice_by, path, line), fields))
    return items


def _arguments(arguments):
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def _tags(conversation: dict, slice_by: str | None, path, line: int) -> list[str]:
    metadata = conversation.get("metadata") if isinstance(conversation.get("metadata"), dict) else {}
    if slice_by:
        value = metadata.get(slice_by, conversation.get(slice_by))
        return [] if value is None else [f"{slice_by}={value}"]
    tags = metadata.get("tags", [])
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{path}: line {line}: metadata.tags: must be a list of strings, got {tags!r}")
    return tags


def few_shot_turns(training_file: str | Path, k: int, seed: int = 0) -> list[dict]:
    """K training examples as alternating user/assistant messages: each example's last user message and its
    reply (the system prompt is the held-out prompt's own, so it is not repeated)."""
    conversations = [c for _, c in read_numbered_conversations(training_file)]
    chosen = random.Random(seed).sample(conversations, min(k, len(conversations)))
    turns = []
    for conversation in chosen:
        prompt, reply = split_prompt_and_reply(conversation)
        user = next((m for m in reversed(prompt) if m["role"] == "user"), None)
        if user is not None:
            turns += [{"role": "user", "content": content_text(user.get("content")) or ""},
                      {"role": "assistant", "content": reply}]
    return turns


def with_shots(prompt: list[dict], shots: list[dict]) -> list[dict]:
    """The prompt with the shots placed after its system message(s) and before its first other message."""
    system = [m for m in prompt[:1] if m["role"] in ("system", "developer")]
    return system + shots + prompt[len(system):]


def slices(items: list[Item]) -> dict[str, list[int]]:
    """Tag → the indices of the items carrying it."""
    found: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        for tag in item.tags:
            found.setdefault(tag, []).append(index)
    return found
