"""Read OpenAI chat JSONL (`{"messages": [...]}` per line) with errors that name file, line and field.

Training refuses a file with any format error (the rules live in `tunelab.data.validate`, which also
reports warnings and statistics); this reader returns the conversations or raises every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.data.validate import content_text, example_errors, read_jsonl_lines
from tunelab.files import input_file_problem


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
        if len(problems) == 1:  # one line says it
            only = problems[0]
            super().__init__(f"{only.path}: {only.message}" if only.line == 0 else str(only))
            return
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{shown}{more}")


def read_conversations(path: str | Path) -> list[dict]:
    """Return every conversation in a chat JSONL file, or raise DataError listing every problem."""
    return [conversation for _line, conversation in read_numbered_conversations(path)]


def read_numbered_conversations(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, conversation) for every conversation in a chat JSONL file, or raise DataError."""
    path = Path(path)
    problem = input_file_problem(path)
    if problem:
        raise DataError([DataProblem(str(path), 0, "file", problem)])
    conversations: list[tuple[int, dict]] = []
    problems: list[DataProblem] = []
    for line_number, record, unreadable in read_jsonl_lines(path):
        if unreadable:
            problems.append(DataProblem(str(path), line_number, "line", f"{unreadable[1]} [{unreadable[0]}]"))
            continue
        found = example_errors(record)
        problems += [DataProblem(str(path), line_number, field or "line", f"{message} [{code}]")
                     for code, field, message in found]
        if not found:
            conversations.append((line_number, record))
    if not conversations and not problems:
        problems.append(DataProblem(str(path), 0, "file", "the file holds no conversations"))
    if problems:
        raise DataError(problems)
    return conversations


def split_prompt_and_reply(conversation: dict) -> tuple[list[dict], str]:
    """Everything before the last assistant message (the prompt) and that message's text (the reference;
    for a reply that calls tools, its calls as they are written: name and arguments)."""
    messages = conversation["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    reply = messages[last]
    text = content_text(reply.get("content")) or ""
    calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in reply.get("tool_calls") or []]
    return messages[:last], "\n".join(part for part in (text, *calls) if part)
