"""OpenAI's chat format, one example at a time: what a valid line is, and what is wrong with one that is not.

A line is `{"messages": [...], "tools": [...]}` as OpenAI's fine-tuning API takes it. Errors use the codes of
OpenAI's data-preparation checker (`data_type`, `missing_messages_list`, `message_missing_key`,
`message_unrecognized_key`, `unrecognized_role`, `missing_content`, `example_missing_assistant_message`)
plus `invalid_weight`, `invalid_tool_arguments`, `invalid_tools`, `tool_call_id_mismatch`, and
`unsupported_content` for image, audio and file parts. Text parts are read, joined; `developer` is OpenAI's
current name for the system role. Every message says what was found as well as what was expected.

Checks that need the whole file (duplicates, counts, token lengths) are the data toolkit's
(`tunelab/data/validate.py`); this module knows one example.
"""

from __future__ import annotations

import json

from tunelab.conversation.problems import ERROR, Problem

ROLES = {"system", "user", "assistant", "tool", "function", "developer"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}


def describe(value) -> str:
    """What a JSON value is, for messages that say what was found: 'a string ("hi")', 'null', 'the number 3'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "…"
        return f"a string ({json.dumps(shown, ensure_ascii=False)})" if value.strip() else \
            ("an empty string" if not value else "a string of only whitespace")
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)" if value else "an empty list"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    return type(value).__name__


# Content parts OpenAI accepts that a text-only model cannot take.
UNSUPPORTED_PARTS = {"image_url": "an image", "input_audio": "audio", "file": "a file"}


def content_text(content) -> str | None:
    """A message's text: the string itself, or its text (and refusal) parts joined; None if neither."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or part.get("refusal") or "" for part in content if isinstance(part, dict))
    return None


def content_errors(content, where: str) -> list[tuple[str, str, str]]:
    """A message's `content`: a non-empty string, or a list of text parts (joined)."""
    if isinstance(content, str):
        return [] if content.strip() else [("missing_content", f"{where}.content", f"is {describe(content)}")]
    if not isinstance(content, list):
        return [("missing_content", f"{where}.content", f"must be text or a list of text parts; found {describe(content)}")]
    errors = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        part_where = f"{where}.content[{index}]"
        if isinstance(kind, str) and kind in UNSUPPORTED_PARTS:
            errors.append(("unsupported_content", part_where,
                           f"{UNSUPPORTED_PARTS[kind]} ({kind} part): not supported for this model, which reads text "
                           "only; remove the part or describe it in text"))
        elif kind in ("text", "refusal") and isinstance(part.get(kind), str):
            continue
        elif kind in ("text", "refusal"):
            errors.append(("missing_content", f"{part_where}.{kind}", f"must be a string; found {describe(part.get(kind))}"))
        else:
            errors.append(("missing_content", part_where, 'each part must be {"type": "text", "text": …}; found '
                           + (f"a part of type {kind!r}" if isinstance(kind, str) else describe(part))))
    if not errors and not (content_text(content) or "").strip():
        errors.append(("missing_content", f"{where}.content", "its text parts are all empty" if content else "is an empty list"))
    return errors


def example_problems(record, line: int = 0, file: str = "") -> list[Problem]:
    """The format errors of one parsed line (of `file`, at `line`). Messages say what was found."""
    return [Problem(ERROR, code, line, path, message, file) for code, path, message in _example_errors(record)]


def _example_errors(record) -> list[tuple[str, str, str]]:
    """(code, path, message) for each format error of one parsed line."""
    if not isinstance(record, dict):
        return [("data_type", "", f"each line must be a JSON object; found {describe(record)}")]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        found = "no `messages` key" + (f" (keys: {', '.join(sorted(record)[:5])})" if record else "") \
            if "messages" not in record else describe(messages)
        return [("missing_messages_list", "messages", f"must be a non-empty list of messages; found {found}")]
    errors = []
    errors += _tools_errors(record.get("tools"))
    tool_call_ids = set()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            errors.append(("data_type", where, f"each message must be an object; found {describe(message)}"))
            continue
        if "role" not in message or ("content" not in message and not calls_a_tool(message)):
            missing = "role" if "role" not in message else "content"
            errors.append(("message_missing_key", where, f"has no `{missing}` (keys: {', '.join(sorted(message))})"))
        unknown = sorted(set(message) - MESSAGE_KEYS)
        if unknown:
            errors.append(("message_unrecognized_key", f"{where}.{unknown[0]}", f"unrecognised key(s) {unknown}"))
        if "role" in message and (not isinstance(message["role"], str) or message["role"] not in ROLES):
            role = message["role"]
            found = repr(role) if isinstance(role, str) else describe(role)
            errors.append(("unrecognized_role", f"{where}.role", f"unrecognised role {found}; use one of {sorted(ROLES)}"))
        if "content" in message and not (calls_a_tool(message) and message["content"] in (None, "")):
            errors += content_errors(message["content"], where)
        if "weight" in message and not (type(message["weight"]) is int and message["weight"] in (0, 1)):
            errors.append(("invalid_weight", f"{where}.weight", f"must be the integer 0 or 1; found {describe(message['weight'])}"))
        calls = message.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            errors.append(("invalid_tool_arguments", f"{where}.tool_calls", f"must be a list of calls; found {describe(calls)}"))
            calls = []
        for call_index, call in enumerate(calls or []):
            call_where = f"{where}.tool_calls[{call_index}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                errors.append(("invalid_tool_arguments", f"{call_where}.function",
                               'must be {"name": …, "arguments": "<JSON object>"}; found '
                               + describe(function if isinstance(call, dict) else call)))
                continue
            problem = _arguments_problem(function.get("arguments"))
            if problem:
                errors.append(("invalid_tool_arguments", f"{call_where}.function.arguments", problem))
            if isinstance(call.get("id"), str):
                tool_call_ids.add(call["id"])
        call_id = message.get("tool_call_id")
        if message.get("role") == "tool" and (not isinstance(call_id, str) or call_id not in tool_call_ids):
            errors.append(("tool_call_id_mismatch", f"{where}.tool_call_id",
                           f"{describe(call_id)} matches no earlier assistant tool call"))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errors.append(("example_missing_assistant_message", "messages", "no assistant message, so nothing to learn"))
    return errors


# What a chat request may leave out or add that a training example may not: it asks for the next reply (so
# needs no assistant message), weights mean nothing there, and OpenAI accepts message keys we do not use.
_NOT_PROMPT_ERRORS = ("example_missing_assistant_message", "invalid_weight", "message_unrecognized_key")


def prompt_errors(messages, tools=None) -> list[tuple[str, str, str]]:
    """(code, path, message) for each format error of a chat request's messages and tools, in the training
    format's terms (the same checks, so what trains is what the server accepts)."""
    return [error for error in _example_errors({"messages": messages, "tools": tools}) if error[0] not in _NOT_PROMPT_ERRORS]


def calls_a_tool(message: dict) -> bool:
    """Does this (assistant) message call a tool? Then its content may be empty."""
    return bool(message.get("tool_calls") or message.get("function_call"))


def _arguments_problem(arguments) -> str | None:
    """Why a tool call's `arguments` is not a string holding a JSON object, or None if it is one."""
    if not isinstance(arguments, str):
        hint = " (encode it with json.dumps)" if isinstance(arguments, dict) else ""
        return f"must be a string holding a JSON object; found {describe(arguments)}{hint}"
    try:
        parsed = json.loads(arguments, parse_constant=reject_constant)
    except (json.JSONDecodeError, ValueError) as error:
        return f"is a string but not valid JSON ({getattr(error, 'msg', error)}): {describe(arguments)}"
    if not isinstance(parsed, dict):
        return f"is a JSON string that holds {describe(parsed)}, not an object"
    return None


def _tools_errors(tools) -> list[tuple[str, str, str]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        return [("invalid_tools", "tools", f"must be a list of tool definitions; found {describe(tools)}")]
    errors = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str) \
                or not isinstance(function.get("parameters", {}), dict):
            errors.append(("invalid_tools", f"tools[{index}]",
                           'each tool must be {"type": "function", "function": {"name": …, "parameters": {…}}}; '
                           f"found {describe(tool)}" + (f" of type {tool.get('type')!r}" if isinstance(tool, dict)
                                                         and tool.get("type") != "function" else "")))
    return errors


def reject_constant(name: str):
    """For json.loads(parse_constant=…): NaN and Infinity are Python's extensions, not JSON."""
    raise ValueError(f"{name} is not JSON")


def last_assistant_index(messages: list[dict]) -> int:
    """The position of the last assistant message (every valid example has one)."""
    return max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
