"""Read OpenAI chat JSONL (`{"messages": [...]}` per line) with errors that name file, line and field.

This is the structural check training needs before it starts; `tunelab data validate` (a fuller rule set
with warnings, statistics and cost) builds on the same reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROLES = {"system", "user", "assistant", "tool", "function", "developer"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with one line of a data file."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class DataError(ValueError):
    """A data file that cannot be used, with every problem found (not just the first)."""

    def __init__(self, problems: list[DataProblem]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{shown}{more}")


def read_conversations(path: str | Path) -> list[dict]:
    """Return every conversation in a chat JSONL file, or raise DataError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError([DataProblem(str(path), 0, "file", "no such file")])
    conversations: list[dict] = []
    problems: list[DataProblem] = []
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problems.append(DataProblem(str(path), line_number, "line", "not valid UTF-8"))
                continue
            except json.JSONDecodeError as error:
                problems.append(DataProblem(str(path), line_number, "line", f"not valid JSON ({error.msg})"))
                continue
            found = _check_conversation(record)
            problems += [DataProblem(str(path), line_number, field, message) for field, message in found]
            if not found:
                conversations.append(record)
    if not conversations and not problems:
        problems.append(DataProblem(str(path), 0, "file", "the file holds no conversations"))
    if problems:
        raise DataError(problems)
    return conversations


def _check_conversation(record) -> list[tuple[str, str]]:
    """The problems that make a record unusable for training, as (field path, message) pairs."""
    if not isinstance(record, dict):
        return [("line", "each line must be a JSON object")]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return [("messages", "missing or not a non-empty list of messages")]
    problems = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.append((where, "each message must be an object"))
            continue
        if message.get("role") not in ROLES:
            problems.append((f"{where}.role", f"unrecognised role {message.get('role')!r}"))
        unknown = set(message) - MESSAGE_KEYS
        if unknown:
            problems.append((where, f"unrecognised key(s) {sorted(unknown)}"))
        content = message.get("content")
        if not isinstance(content, str) and not message.get("tool_calls") and not message.get("function_call"):
            problems.append((f"{where}.content", "missing, or not a string"))
        if "weight" in message and message["weight"] not in (0, 1):
            problems.append((f"{where}.weight", f"must be 0 or 1, got {message['weight']!r}"))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append(("messages", "no assistant message, so nothing to learn from"))
    return problems


def split_prompt_and_reply(conversation: dict) -> tuple[list[dict], str]:
    """Everything before the last assistant message (the prompt) and that message (the reference)."""
    messages = conversation["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]
