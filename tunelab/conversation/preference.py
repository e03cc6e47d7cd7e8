"""OpenAI's preference format (fine-tuning `method: dpo`), one pair at a time: what a valid line is, what is
wrong with one that is not, and the pair as the two conversations a model is trained to tell apart.

    {"input": {"messages": [...], "tools": [...], "parallel_tool_calls": true},
     "preferred_output": [{"role": "assistant", "content": "…"}],
     "non_preferred_output": [{"role": "assistant", "content": "…"}]}

Older material spells the outputs `preferred_completion` / `non_preferred_completion`; both spellings are read.
The input is checked as a chat request is (`schema.prompt_errors`: the same roles, content and tool rules as
a training example) and must end where a reply comes next — on a user or tool message. Each output is a list
of exactly one assistant message with text: a one-turn preference, both outputs continuing the same input.
Error codes follow the chat format's where one fits (`data_type`, `message_missing_key`, `missing_content`,
…) with the path inside the pair (`input.messages[2].content`, `preferred_output[0].content`), plus
`missing_input`, `input_ends_with_assistant`, `missing_output`, `invalid_output` and `output_not_text`.

Checks that need the whole file (counts, token lengths, identical outputs) are the data toolkit's; this
module knows one pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.conversation.problems import ERROR, Problem
from tunelab.conversation.schema import content_errors, content_text, describe, prompt_errors

OUTPUTS = ("preferred_output", "non_preferred_output")
OLDER_SPELLING = {"preferred_completion": "preferred_output", "non_preferred_completion": "non_preferred_output"}
PAIR_KEYS = {"input", *OUTPUTS, *OLDER_SPELLING, "metadata"}


def is_preference(record) -> bool:
    """Does this parsed line look like a preference pair rather than a chat example? An `input` that is text
    is not one: Alpaca's and input/ideal_output records have it too, and are other data to convert."""
    return isinstance(record, dict) and "messages" not in record and (
        any(key in record for key in (*OUTPUTS, *OLDER_SPELLING)) or isinstance(record.get("input"), dict))


def with_current_spelling(record: dict) -> dict:
    """The pair with `preferred_output`/`non_preferred_output`, whichever spelling it came in."""
    renamed = dict(record)
    for older, current in OLDER_SPELLING.items():
        if older in renamed and current not in renamed:
            renamed[current] = renamed.pop(older)
    return renamed


def preference_problems(record, line: int = 0, file: str = "") -> list[Problem]:
    """The format errors of one parsed preference line (of `file`, at `line`). Messages say what was found."""
    return [Problem(ERROR, code, line, path, message, file) for code, path, message in _pair_errors(record)]


def _pair_errors(record) -> list[tuple[str, str, str]]:
    if not isinstance(record, dict):
        return [("data_type", "", f"each line must be a JSON object; found {describe(record)}")]
    record = with_current_spelling(record)
    errors = []
    source = record.get("input")
    if not isinstance(source, dict):
        found = "no `input` key" + (f" (keys: {', '.join(sorted(record)[:5])})" if record else "") \
            if "input" not in record else describe(source)
        errors.append(("missing_input", "input", 'must be {"messages": [...]}, the conversation both outputs '
                       f"continue; found {found}"))
    else:
        messages = source.get("messages")
        errors += [(code, f"input.{path}", message) for code, path, message in prompt_errors(messages, source.get("tools"))]
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
                and messages[-1].get("role") == "assistant":
            errors.append(("input_ends_with_assistant", f"input.messages[{len(messages) - 1}]",
                           "the input ends with an assistant message; it must end where the reply comes next "
                           "(a user or tool message), since both outputs are that reply"))
    for name in OUTPUTS:
        errors += _output_errors(record, name)
    return errors


def _output_errors(record: dict, name: str) -> list[tuple[str, str, str]]:
    if name not in record:
        older = next(o for o, c in OLDER_SPELLING.items() if c == name)
        return [("missing_output", name, f"is missing (or `{older}`): a pair needs both outputs")]
    output = record[name]
    if not isinstance(output, list) or len(output) != 1:
        return [("invalid_output", name, f"must be a list of exactly one assistant message; found {describe(output)}")]
    message, where = output[0], f"{name}[0]"
    if not isinstance(message, dict):
        return [("data_type", where, f"must be a message object; found {describe(message)}")]
    if message.get("role") != "assistant":
        found = repr(message["role"]) if isinstance(message.get("role"), str) else describe(message.get("role"))
        return [("invalid_output", f"{where}.role", f"must be 'assistant'; found {found}")]
    if message.get("tool_calls") or message.get("function_call"):
        return [("output_not_text", where, "calls a tool; preference outputs are text replies only")]
    if "content" not in message:
        return [("message_missing_key", where, f"has no `content` (keys: {', '.join(sorted(message))})")]
    return content_errors(message["content"], where)


@dataclass
class PreferencePair:
    """A valid pair as the trainer needs it: the shared prompt and the two replies, as chat conversations."""

    messages: list[dict]  # the input, ending where the reply comes next
    tools: list[dict] | None
    preferred: str
    non_preferred: str
    metadata: dict | None = None  # the line's own, where it has one (its tags slice an evaluation)

    def conversation(self, preferred: bool) -> dict:
        """The input followed by one of the outputs, to render with the chat template as one conversation: the
        prompt's tokens are then the same in both, and the reply is what differs."""
        reply = self.preferred if preferred else self.non_preferred
        # Only the output is scored: earlier assistant turns of the input are context (weight 0), as in TRL,
        # where the whole input is the prompt.
        context = [dict(m, weight=0) if m.get("role") == "assistant" else m for m in self.messages]
        conversation = {"messages": [*context, {"role": "assistant", "content": reply}]}
        if self.tools:
            conversation["tools"] = self.tools
        return conversation


def read_pair(record: dict) -> PreferencePair:
    """A pair from a line that `preference_problems` found valid."""
    record = with_current_spelling(record)
    return PreferencePair(messages=record["input"]["messages"], tools=record["input"].get("tools"),
                          preferred=content_text(record["preferred_output"][0]["content"]),
                          non_preferred=content_text(record["non_preferred_output"][0]["content"]),
                          metadata=record.get("metadata") if isinstance(record.get("metadata"), dict) else None)
