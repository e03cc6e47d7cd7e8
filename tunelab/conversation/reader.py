"""Read OpenAI chat JSONL (`{"messages": [...]}` per line) with problems that name file, line and field.

    conversations = read_conversations("train.jsonl")      # or DataError listing every problem

Training refuses a file with any format error (the rules are in `schema.py`; the data toolkit adds
warnings and statistics over the whole file); this reader returns the conversations or raises every
problem at once. Lines are read as bytes and parsed one at a time, so a file of any size streams.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.conversation.preference import PreferencePair, is_preference, preference_problems, read_pair
from tunelab.conversation.problems import ERROR, DataError, Problem
from tunelab.conversation.reinforcement import Task, is_task, read_task, task_problems
from tunelab.conversation.schema import content_text, example_problems, last_assistant_index, reject_constant
from tunelab.conversation.shapes import conversion_hint
from tunelab.core.files import input_file_problem


def read_conversations(path: str | Path) -> list[dict]:
    """Return every conversation in a chat JSONL file, or raise DataError listing every problem."""
    return [conversation for _line, conversation in read_numbered_conversations(path)]


def read_numbered_conversations(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, conversation) for every conversation in a chat JSONL file, or raise DataError. A file
    of preference pairs is said to be one, once, rather than each of its lines found to lack `messages`."""
    try:
        return _read_numbered(path, example_problems, "conversations")
    except DataError as error:
        if input_file_problem(Path(path)):  # not a regular file (a FIFO would block a second read): as it is
            raise
        first = _first_record(path)
        if is_preference(first):
            raise DataError([Problem(ERROR, "preference_file", 0, "", "holds preference pairs (OpenAI's format for "
                                     "DPO: input, preferred_output, non_preferred_output), not chat examples; this "
                                     "command reads chat examples (to train on pairs: --method dpo)", str(path))]) from None
        _refuse_another_shape(path, first)
        raise error


def read_numbered_pairs(path: str | Path) -> list[tuple[int, PreferencePair]]:
    """(line number, pair) for every preference pair of a file in OpenAI's preference format, or raise
    DataError listing every problem. A file of chat examples is said to be one, once."""
    try:
        return [(line, read_pair(record)) for line, record in _read_numbered(path, preference_problems, "preference pairs")]
    except DataError as error:
        if input_file_problem(Path(path)):
            raise
        first = _first_record(path)
        if isinstance(first, dict) and "messages" in first and not is_preference(first):
            raise DataError([Problem(ERROR, "chat_file", 1, "input", "holds chat examples (messages), not preference "
                                     "pairs (input, preferred_output, non_preferred_output); a dpo run trains on "
                                     "pairs (`tunelab data convert` makes them from TRL's or LLaMA-Factory's)",
                                     str(path))]) from None
        _refuse_another_shape(path, first)
        raise error


def read_numbered_tasks(path: str | Path) -> list[tuple[int, Task]]:
    """(line number, task) for every reinforcement task of a file (a prompt and the item its grader reads), or
    raise DataError listing every problem. A file of preference pairs is said to be one, once."""
    try:
        return [(line, read_task(record)) for line, record in _read_numbered(path, task_problems, "tasks")]
    except DataError as error:
        if input_file_problem(Path(path)):
            raise
        first = _first_record(path)
        if is_preference(first):
            raise DataError([Problem(ERROR, "preference_file", 0, "", "holds preference pairs, not reinforcement "
                                     "tasks (messages, and the keys a grader reads)", str(path))]) from None
        if isinstance(first, dict) and isinstance(first.get("messages"), list) and first["messages"] and \
                isinstance(first["messages"][-1], dict) and first["messages"][-1].get("role") == "assistant":
            raise DataError([Problem(ERROR, "chat_file", 1, "messages", "holds chat examples (each ending with the "
                                     "assistant's reply), not reinforcement tasks (a prompt ending on the user's turn, "
                                     "and the keys a grader reads); a grpo run samples the replies itself", str(path))]) from None
        raise error


def is_preference_file(path: str | Path) -> bool:
    """Whether a data file holds preference pairs, by its first readable line (False for what cannot be read:
    the chat reader then says why)."""
    return not input_file_problem(Path(path)) and is_preference(_first_record(path))


def is_task_file(path: str | Path) -> bool:
    """Whether a data file holds reinforcement tasks (prompts awaiting their reply), by its first readable line."""
    return not input_file_problem(Path(path)) and is_task(_first_record(path))


def _refuse_another_shape(path: str | Path, first) -> None:
    """A file of another tool's shape (its first line Alpaca, ShareGPT, TRL's, …) is said to be one, once,
    with the command that converts it."""
    if hint := conversion_hint(path, first):
        raise DataError([Problem(ERROR, "other_format", 0, "", f"holds {hint}", str(path))]) from None


def _first_record(path: str | Path):
    return next((record for _, record, unreadable in read_jsonl_lines(Path(path)) if not unreadable), None)


def _read_numbered(path: str | Path, problems_of, what: str) -> list[tuple[int, dict]]:
    """(line number, record) for every valid record of a JSONL file, or raise DataError with every problem."""
    path = Path(path)
    problem = input_file_problem(path)
    if problem:
        raise DataError([Problem(ERROR, "unreadable_file", 0, "", problem, str(path))])
    records: list[tuple[int, dict]] = []
    problems: list[Problem] = []
    for line_number, record, unreadable in read_jsonl_lines(path):
        if unreadable:
            problems.append(unreadable)
            continue
        found = problems_of(record, line_number, str(path))
        problems += found
        if not found:
            records.append((line_number, record))
    if not records and not problems:
        problems.append(Problem(ERROR, "empty_file", 0, "", f"the file holds no {what}", str(path)))
    if problems:
        raise DataError(problems)
    return records


def read_jsonl_lines(path: Path):
    """Yield (line number, record, None) per non-blank line, or (line, None, Problem) for one that won't parse."""
    for line, _, raw in raw_lines(path, 0, None, 1):
        record, unreadable = parse_line(raw)
        yield line, record, unreadable and Problem(ERROR, unreadable[0], line, "", unreadable[1], str(path))


def raw_lines(path: Path, start: int, end: int | None, first_line: int):
    """(line number, byte position after the line, bytes) for each non-blank line of a byte range."""
    with Path(path).open("rb") as handle:
        handle.seek(start)
        position = start
        for line, raw in enumerate(handle, start=first_line):
            if end is not None and position >= end:
                return
            position += len(raw)
            if raw.strip():
                yield line, position, raw


def parse_line(raw: bytes) -> tuple[object, tuple[str, str] | None]:
    """(record, None), or (None, (code, message)) for a line that is not one JSON value."""
    try:
        return json.loads(raw, parse_constant=reject_constant), None
    except UnicodeDecodeError:
        return None, ("not_utf8", "the line is not valid UTF-8")
    except json.JSONDecodeError as error:
        return None, ("invalid_json", f"not valid JSON ({error.msg}, column {error.colno})")
    except ValueError as error:  # NaN, Infinity: Python reads them, JSON has no such values
        return None, ("invalid_json", f"not valid JSON: {error} (use null or a number)")
    except RecursionError:
        return None, ("invalid_json", "nested too deeply to read (more than ~1,000 levels of [ or {)")


def split_prompt_and_reply(conversation: dict) -> tuple[list[dict], str]:
    """Everything before the last assistant message (the prompt) and that message's text (the reference;
    for a reply that calls tools, its calls as they are written: name and arguments)."""
    messages = conversation["messages"]
    last = last_assistant_index(messages)
    reply = messages[last]
    text = content_text(reply.get("content")) or ""
    calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in reply.get("tool_calls") or []]
    return messages[:last], "\n".join(part for part in (text, *calls) if part)
