"""OpenAI's reinforcement fine-tuning format (`method: reinforcement`, `tunelab train --method grpo`), one task
at a time:

    {"messages": [{"role": "user", "content": "What is 17 × 23?"}], "answer": "391"}

`messages` (with `tools` and `parallel_tool_calls`, when given) is the prompt the model answers; every other
key is the task's *item*, which graders read as `{{item.KEY}}` (the reference answer, fields to check, …).
The prompt is checked as a chat request is (`schema.prompt_errors`) and must end where a reply comes next —
on a user or tool message, not on an assistant's reply: the model writes the reply, the grader scores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.conversation.problems import ERROR, Problem
from tunelab.conversation.schema import describe, prompt_errors

PROMPT_KEYS = ("messages", "tools", "parallel_tool_calls")


@dataclass
class Task:
    messages: list[dict]
    tools: list[dict] | None
    item: dict


def is_task(record) -> bool:
    """Does this parsed line look like a reinforcement task (a prompt awaiting its reply) rather than a chat
    example (which ends with the assistant's reply) or a preference pair?"""
    messages = record.get("messages") if isinstance(record, dict) else None
    return isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict) \
        and messages[-1].get("role") not in ("assistant", None)


def task_problems(record, line: int = 0, file: str = "") -> list[Problem]:
    return [Problem(ERROR, code, line, path, message, file) for code, path, message in _task_errors(record)]


def _task_errors(record) -> list[tuple[str, str, str]]:
    if not isinstance(record, dict):
        return [("data_type", "", f"each line must be a JSON object; found {describe(record)}")]
    if "messages" not in record:
        return [("missing_messages", "messages", "no `messages`: a task needs the prompt the model answers"
                 + (f" (keys: {', '.join(sorted(record)[:5])})" if record else ""))]
    errors = prompt_errors(record.get("messages"), record.get("tools"))
    messages = record.get("messages")
    if not errors and isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
            and messages[-1].get("role") == "assistant":
        errors.append(("task_ends_with_assistant", f"messages[{len(messages) - 1}]",
                       "the prompt ends with an assistant's reply; a task ends where the model's reply comes next "
                       "(the reference answer belongs in another key, for the grader)"))
    return errors


def read_task(record: dict) -> Task:
    return Task(record["messages"], record.get("tools"),
                {key: value for key, value in record.items() if key not in PROMPT_KEYS})
