"""Validate chat JSONL: every problem in one pass, each with severity, code, line and field path.

    tunelab data validate train.jsonl --validation valid.jsonl [--strict] [--json]

Errors use the codes of OpenAI's data-preparation checker (`data_type`, `missing_messages_list`,
`message_missing_key`, `message_unrecognized_key`, `unrecognized_role`, `missing_content`,
`example_missing_assistant_message`) plus `invalid_json`, `not_utf8`, `empty_file`, `too_few_examples`,
`invalid_weight`, `invalid_tool_arguments`, `invalid_tools` and `tool_call_id_mismatch`.
Warnings carry the seeds' quality rules: fewer than 50 examples, assistant replies outside 10–2,000
characters, duplicate conversations, one prompt with conflicting answers, training/validation overlap, and
examples without a system or user message. The file is streamed, so memory does not grow with it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROLES = {"system", "user", "assistant", "tool", "function", "developer"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
OPENAI_MIN_EXAMPLES = 10  # OpenAI rejects files with fewer
SIGNAL_MIN_EXAMPLES = 50  # the seeds: "fewer than 50 examples — not enough signal"
REPLY_MIN_CHARS, REPLY_MAX_CHARS = 10, 2000  # the seeds' quality bounds for an assistant reply


@dataclass
class Finding:
    """One problem: `line` is 1-based (0 for the file as a whole); `path` points inside the example."""

    severity: str  # "error" or "warning"
    code: str
    line: int
    path: str
    message: str


@dataclass
class ValidationReport:
    file: str
    examples: int = 0
    findings: list[Finding] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_dict(self) -> dict:
        return {"file": self.file, "examples": self.examples, "findings": [asdict(f) for f in self.findings],
                "stats": self.stats, "cost": None}


def example_errors(record) -> list[tuple[str, str, str]]:
    """The format errors of one parsed line, as (code, path, message) triples."""
    if not isinstance(record, dict):
        return [("data_type", "", "each line must be a JSON object")]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return [("missing_messages_list", "messages", "missing, or not a non-empty list of messages")]
    errors = []
    errors += _tools_errors(record.get("tools"))
    tool_call_ids = set()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            errors.append(("data_type", where, "each message must be an object"))
            continue
        if "role" not in message or ("content" not in message and not _calls_a_tool(message)):
            missing = "role" if "role" not in message else "content"
            errors.append(("message_missing_key", where, f"has no `{missing}`"))
        unknown = sorted(set(message) - MESSAGE_KEYS)
        if unknown:
            errors.append(("message_unrecognized_key", f"{where}.{unknown[0]}", f"unrecognised key(s) {unknown}"))
        if "role" in message and message["role"] not in ROLES:
            errors.append(("unrecognized_role", f"{where}.role", f"unrecognised role {message['role']!r}; "
                           f"use one of {sorted(ROLES)}"))
        if "content" in message and not _calls_a_tool(message) and (
                not isinstance(message["content"], str) or not message["content"].strip()):
            errors.append(("missing_content", f"{where}.content", "empty, or not a string"))
        if "weight" in message and message["weight"] not in (0, 1):
            errors.append(("invalid_weight", f"{where}.weight", f"must be 0 or 1, got {message['weight']!r}"))
        for call_index, call in enumerate(message.get("tool_calls") or []):
            call_where = f"{where}.tool_calls[{call_index}]"
            arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
            if not _is_json_object_string(arguments):
                errors.append(("invalid_tool_arguments", f"{call_where}.function.arguments",
                               "must be a string holding a JSON object"))
            if isinstance(call, dict) and call.get("id"):
                tool_call_ids.add(call["id"])
        if message.get("role") == "tool" and message.get("tool_call_id") not in tool_call_ids:
            errors.append(("tool_call_id_mismatch", f"{where}.tool_call_id",
                           f"{message.get('tool_call_id')!r} matches no earlier assistant tool call"))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errors.append(("example_missing_assistant_message", "messages", "no assistant message, so nothing to learn"))
    return errors


def _calls_a_tool(message: dict) -> bool:
    return bool(message.get("tool_calls") or message.get("function_call"))


def _is_json_object_string(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return isinstance(json.loads(value), dict)
    except json.JSONDecodeError:
        return False


def _tools_errors(tools) -> list[tuple[str, str, str]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        return [("invalid_tools", "tools", "must be a list of tool definitions")]
    errors = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str) \
                or not isinstance(function.get("parameters", {}), dict):
            errors.append(("invalid_tools", f"tools[{index}]",
                           'each tool must be {"type": "function", "function": {"name": …, "parameters": {…}}}'))
    return errors


def read_jsonl_lines(path: Path):
    """Yield (line number, record, None) per non-blank line, or (line, None, (code, message)) if it won't parse."""
    with Path(path).open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield line, json.loads(raw.decode("utf-8")), None
            except UnicodeDecodeError:
                yield line, None, ("not_utf8", "the line is not valid UTF-8")
            except json.JSONDecodeError as error:
                yield line, None, ("invalid_json", f"not valid JSON ({error.msg}, column {error.colno})")


def _fingerprint(text: str) -> str:
    return hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()


def _prompt_and_reply_text(messages: list[dict]) -> tuple[str, str]:
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    prompt = "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages[:last])
    return prompt, str(messages[last].get("content") or "")


def validate_file(path: str | Path, validation: str | Path | None = None) -> ValidationReport:
    """All findings for a training file (and its overlap with a validation file, if given)."""
    report = _scan(Path(path))
    if validation:
        validation_report = _scan(Path(validation))
        training_prompts = report.stats.pop("_prompts")
        for line, prompt in validation_report.stats.pop("_prompts").items():
            if prompt in training_prompts.values():
                report.findings.append(Finding("warning", "validation_overlap", line, "messages",
                                               f"{validation}:{line} has the same prompt as a training example "
                                               "(leakage: validation scores would be optimistic)"))
    report.stats.pop("_prompts", None)
    return report


def _scan(path: Path) -> ValidationReport:
    report = ValidationReport(str(path))
    add = report.findings.append
    if not path.is_file():
        add(Finding("error", "empty_file", 0, "", "no such file"))
        return report
    seen_conversations: dict[str, int] = {}
    answers_by_prompt: dict[str, dict[str, int]] = defaultdict(dict)
    prompts: dict[int, str] = {}
    counts = Counter()
    reply_lengths = []
    for line, record, unreadable in read_jsonl_lines(path):
        if unreadable:
            add(Finding("error", unreadable[0], line, "", unreadable[1]))
            continue
        report.examples += 1
        errors = example_errors(record)
        for code, where, message in errors:
            add(Finding("error", code, line, where, message))
        if errors:
            continue
        messages = record["messages"]
        roles = Counter(m.get("role") for m in messages)
        counts["multi_turn"] += roles["assistant"] > 1
        counts["missing_system"] += roles["system"] == 0
        counts["missing_user"] += roles["user"] == 0
        for index, message in enumerate(messages):
            if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
                continue
            length = len(message["content"])
            reply_lengths.append(length)
            if length < REPLY_MIN_CHARS or length > REPLY_MAX_CHARS:
                code = "reply_too_short" if length < REPLY_MIN_CHARS else "reply_too_long"
                add(Finding("warning", code, line, f"messages[{index}].content",
                            f"assistant reply of {length} characters; the seeds' quality bounds are "
                            f"{REPLY_MIN_CHARS}–{REPLY_MAX_CHARS}"))
        conversation = _fingerprint(json.dumps(messages, sort_keys=True))
        if conversation in seen_conversations:
            add(Finding("warning", "duplicate_example", line, "messages",
                        f"same conversation as line {seen_conversations[conversation]}"))
        else:
            seen_conversations[conversation] = line
        prompt, reply = (_fingerprint(t) for t in _prompt_and_reply_text(messages))
        prompts[line] = prompt
        others = {r: l for r, l in answers_by_prompt[prompt].items() if r != reply}
        if others:
            add(Finding("warning", "conflicting_answers", line, "messages",
                        f"same prompt as line {min(others.values())} with a different answer"))
        answers_by_prompt[prompt].setdefault(reply, line)
    if report.examples == 0 and not report.findings:
        add(Finding("error", "empty_file", 0, "", "the file holds no examples"))
    elif 0 < report.examples < OPENAI_MIN_EXAMPLES:
        add(Finding("error", "too_few_examples", 0, "", f"{report.examples} examples; OpenAI requires at least "
                    f"{OPENAI_MIN_EXAMPLES}"))
    elif report.examples < SIGNAL_MIN_EXAMPLES:
        add(Finding("warning", "few_examples", 0, "", f"{report.examples} examples: below {SIGNAL_MIN_EXAMPLES} there "
                    "is not enough signal; 100–500 good ones is the usual recommendation"))
    for key, code, what in (("missing_system", "missing_system_message", "system"),
                            ("missing_user", "missing_user_message", "user")):
        if counts[key]:
            add(Finding("warning", code, 0, "", f"{counts[key]} example(s) have no {what} message"))
    report.stats = {
        "examples": report.examples,
        "multi_turn": counts["multi_turn"],
        "assistant_reply_chars": _distribution(reply_lengths),
        "_prompts": prompts,
    }
    return report


def _distribution(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "p50": pick(0.5), "p90": pick(0.9), "max": ordered[-1], "count": len(ordered)}
