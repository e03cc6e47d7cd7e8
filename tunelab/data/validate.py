"""Validate chat JSONL: every problem in one pass, each with severity, code, line and field path.

    tunelab data validate train.jsonl --validation valid.jsonl [--model M | --target openai:MODEL] [--json]

Errors use the codes of OpenAI's data-preparation checker (`data_type`, `missing_messages_list`,
`message_missing_key`, `message_unrecognized_key`, `unrecognized_role`, `missing_content`,
`example_missing_assistant_message`) plus `invalid_json`, `not_utf8`, `empty_file`, `too_few_examples`,
`invalid_weight`, `invalid_tool_arguments`, `invalid_tools`, `tool_call_id_mismatch`, and
`unsupported_content` for image, audio and file parts (text parts are read, joined; `developer` counts as
the system role). Every message says what was found as well as what was expected.
Warnings carry the recommended quality rules: fewer than 50 examples, assistant replies outside 10–2,000
characters, duplicate conversations, one prompt with conflicting answers, training/validation overlap, and
examples without a system or user message, and examples longer than the token limit (`--max-tokens`,
else what training would cut at), with how many tokens would be cut.

Token statistics and the cost come from `tokens.py` and `cost.py`. The file is streamed in batches: what
is kept per example is a few integers (its token lengths and hashes for the duplicate checks).
"""

from __future__ import annotations

import json
import os
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROLES = {"system", "user", "assistant", "tool", "function", "developer"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
OPENAI_MIN_EXAMPLES = 10  # OpenAI rejects files with fewer
SIGNAL_MIN_EXAMPLES = 50  # fewer than 50 examples: not enough signal
REPLY_MIN_CHARS, REPLY_MAX_CHARS = 10, 2000  # recommended bounds for an assistant reply
BATCH = 1000  # examples tokenized together


@dataclass
class Finding:
    """One problem: `line` is 1-based (0 for the file as a whole); `path` points inside the example."""

    severity: str  # "error" or "warning"
    code: str
    line: int
    path: str
    message: str
    file: str = ""


@dataclass
class ValidationReport:
    file: str
    examples: int = 0
    findings: list[Finding] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    cost: dict | None = None
    token_lengths: array = field(default_factory=lambda: array("I"))  # per valid example, in file order

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_dict(self) -> dict:
        return {"file": self.file, "examples": self.examples, "findings": [asdict(f) for f in self.findings],
                "stats": self.stats, "cost": self.cost}


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


def _content_errors(content, where: str) -> list[tuple[str, str, str]]:
    """A message's `content`: a non-empty string, or a list of text parts (joined)."""
    if isinstance(content, str):
        return [] if content.strip() else [("missing_content", f"{where}.content", f"is {describe(content)}")]
    if not isinstance(content, list):
        return [("missing_content", f"{where}.content", f"must be text or a list of text parts; found {describe(content)}")]
    errors = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        part_where = f"{where}.content[{index}]"
        if kind in UNSUPPORTED_PARTS:
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


def example_errors(record) -> list[tuple[str, str, str]]:
    """The format errors of one parsed line, as (code, path, message) triples. Messages say what was found."""
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
        if "role" not in message or ("content" not in message and not _calls_a_tool(message)):
            missing = "role" if "role" not in message else "content"
            errors.append(("message_missing_key", where, f"has no `{missing}` (keys: {', '.join(sorted(message))})"))
        unknown = sorted(set(message) - MESSAGE_KEYS)
        if unknown:
            errors.append(("message_unrecognized_key", f"{where}.{unknown[0]}", f"unrecognised key(s) {unknown}"))
        if "role" in message and (not isinstance(message["role"], str) or message["role"] not in ROLES):
            role = message["role"]
            found = repr(role) if isinstance(role, str) else describe(role)
            errors.append(("unrecognized_role", f"{where}.role", f"unrecognised role {found}; use one of {sorted(ROLES)}"))
        if "content" in message and not (_calls_a_tool(message) and message["content"] in (None, "")):
            errors += _content_errors(message["content"], where)
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


def _calls_a_tool(message: dict) -> bool:
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


def read_jsonl_lines(path: Path):
    """Yield (line number, record, None) per non-blank line, or (line, None, (code, message)) if it won't parse."""
    for line, _, raw in _raw_lines(path, 0, None, 1):
        yield line, *_parse(raw)


def _raw_lines(path: Path, start: int, end: int | None, first_line: int):
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


def _parse(raw: bytes) -> tuple[object, tuple[str, str] | None]:
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


# Deleted before comparing texts for near-duplicates: ASCII punctuation, digits and whitespace.
_IGNORED_FOR_NEAR = str.maketrans("", "", "".join(chr(c) for c in range(128) if not chr(c).isalpha()))


def conversation_texts(messages: list[dict]) -> tuple[str, str, str]:
    """The prompt (everything before the last assistant message), that reply, and what follows, as text."""
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    as_text = lambda part: "\n".join(f"{m.get('role')}: {_message_text(m)}" for m in part)  # noqa: E731
    return as_text(messages[:last]), _message_text(messages[last]), as_text(messages[last + 1:])


def _message_text(message: dict) -> str:
    """A message's text and its tool calls (names and arguments), so calls count when comparing examples."""
    text = str(message.get("content") or "")
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {} if isinstance(call, dict) else {}
        text += f"\n[call {function.get('name')} {function.get('arguments')}]"
    return text


def fingerprints(messages: list[dict]) -> tuple[int, int, int, int]:
    """Hashes of the conversation (case ignored), of it with punctuation, digits and spacing also ignored
    (near-duplicates), of its prompt, and of its last reply (both compared as near-duplicates are)."""
    prompt, reply, later = (text.lower() for text in conversation_texts(messages))
    whole = f"{prompt}\n{reply}\n{later}"
    return (hash(whole), hash(whole.translate(_IGNORED_FOR_NEAR)), hash(prompt.translate(_IGNORED_FOR_NEAR)),
            hash(reply.translate(_IGNORED_FOR_NEAR)))


@dataclass
class _Scan:
    """What one pass over (part of) a file found; parts of a file scanned in parallel are merged."""

    findings: list[Finding] = field(default_factory=list)
    examples: int = 0
    counts: Counter = field(default_factory=Counter)
    reply_lengths: array = field(default_factory=lambda: array("I"))
    token_totals: array = field(default_factory=lambda: array("I"))
    token_trained: array = field(default_factory=lambda: array("I"))
    # Per valid example, in file order: its line and the hashes of `fingerprints` (12–40 bytes in all,
    # so memory grows by a few percent of the file, not with it). Duplicates are found from these at the end.
    lines: array = field(default_factory=lambda: array("I"))
    whole: array = field(default_factory=lambda: array("q"))
    near: array = field(default_factory=lambda: array("q"))
    prompt: array = field(default_factory=lambda: array("q"))
    reply: array = field(default_factory=lambda: array("q"))


PARALLEL_FROM_BYTES = 8_000_000  # smaller files are scanned in one process: forking costs more than it saves


def validate_file(path: str | Path, validation: str | Path | None = None, counter=None,
                  max_tokens: int | None = None, progress=None) -> ValidationReport:
    """All findings and statistics for a training file, and its overlap with a validation file if given.

    `counter` (from `tokens.py`) adds token statistics, truncation warnings and the cost; `max_tokens` is
    the limit (default: the counter's own, i.e. what training or OpenAI would cut at). `progress(bytes)`
    is called as the file is read.
    """
    path = Path(path)
    limit = max_tokens or (counter.default_limit if counter else None)
    report = ValidationReport(str(path))
    if not path.is_file():
        report.findings.append(Finding("error", "empty_file", 0, "", "no such file"))
        return report
    scan = _scan_file(path, counter, limit, progress)
    _duplicate_findings(scan)
    _file_level_findings(scan)
    scan.findings.sort(key=lambda finding: finding.line)
    report.examples, report.findings = scan.examples, scan.findings
    report.stats = {
        "examples": scan.examples,
        "valid_examples": len(scan.lines),
        "multi_turn": scan.counts["multi_turn"],
        "assistant_reply_chars": distribution(scan.reply_lengths),
    }
    if counter:
        report.token_lengths = scan.token_totals
        cut = [total - limit for total in scan.token_totals if limit and total > limit]
        report.stats["tokens"] = {
            "counted_with": counter.label, "exact": counter.exact, "limit": limit,
            "total": sum(scan.token_totals), "trained": sum(scan.token_trained),
            "per_example": distribution(scan.token_totals), "trained_per_example": distribution(scan.token_trained),
            "examples_over_limit": len(cut), "tokens_cut": sum(cut),
        }
        if scan.token_totals:
            from tunelab.data.cost import estimate

            report.cost = estimate(counter, scan.token_totals, limit)
    if validation:
        _check_validation_file(Path(validation), scan, report)
    return report


def _check_validation_file(validation: Path, training: _Scan, report: ValidationReport) -> None:
    """The validation file's errors, and its prompts that also occur in training (leakage)."""
    held_out = _scan_file(validation, None, None, None) if validation.is_file() else _Scan(
        findings=[Finding("error", "empty_file", 0, "", "no such file")])
    if held_out.examples == 0 and not held_out.findings:
        held_out.findings.append(Finding("error", "empty_file", 0, "", "the file holds no examples"))
    for finding in held_out.findings:  # OpenAI's 10-example minimum is for training files only
        if finding.severity == "error":
            finding.file = str(validation)
            report.findings.append(finding)
    training_prompts = set(training.prompt)
    for line, prompt in zip(held_out.lines, held_out.prompt):
        if prompt in training_prompts:
            report.findings.append(Finding("warning", "validation_overlap", line, "messages",
                                           f"{validation}:{line} has the same prompt as a training example "
                                           "(leakage: validation scores would be optimistic)", str(validation)))


def _scan_file(path: Path, counter, limit, progress) -> _Scan:
    """Scan a file, in one process per core when it is big enough to be worth it."""
    size = path.stat().st_size
    workers = min(os.cpu_count() or 1, 8) if size >= PARALLEL_FROM_BYTES else 1
    if workers == 1:
        return _scan_range(path, 0, None, 1, counter, limit, progress)
    ranges = _line_aligned_ranges(path, workers)
    import multiprocessing

    # Forked workers inherit the loaded tokenizer and the shared progress counter through this global,
    # rather than having them pickled.
    context = multiprocessing.get_context("fork")
    global _worker_state
    bytes_read = context.Value("q", 0)
    _worker_state = (counter, limit, bytes_read)
    try:
        with context.Pool(len(ranges)) as pool:
            pending = pool.starmap_async(_scan_range_in_worker, [(path, *r) for r in ranges], chunksize=1)
            while not pending.ready():
                pending.wait(0.2)
                if progress:
                    progress(bytes_read.value)
            parts = pending.get()
    finally:
        _worker_state = None
    return _merge(parts)


_worker_state = None  # (token counter, limit, bytes read by all workers) while a parallel scan runs


def _scan_range_in_worker(path, start, end, first_line) -> _Scan:
    counter, limit, bytes_read = _worker_state
    reported = 0

    def report_bytes(count: int) -> None:  # count: bytes of this range read so far
        nonlocal reported
        with bytes_read.get_lock():
            bytes_read.value += count - reported
        reported = count

    return _scan_range(path, start, end, first_line, counter, limit, report_bytes)


def _line_aligned_ranges(path: Path, parts: int) -> list[tuple[int, int | None, int]]:
    """(start byte, end byte, first line number) for `parts` pieces of the file, cut at line ends."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as handle:
        for index in range(1, parts):
            handle.seek(max(cuts[-1], size * index // parts))
            handle.readline()  # move to the start of the next line
            cuts.append(handle.tell())
        cuts.append(size)
        first_lines, lines_so_far = [], 1
        for start, end in zip(cuts, cuts[1:]):
            first_lines.append(lines_so_far)
            handle.seek(start)
            remaining = end - start
            while remaining > 0:
                block = handle.read(min(remaining, 1 << 20))
                lines_so_far += block.count(b"\n")
                remaining -= len(block)
    return [(start, end, first) for start, end, first in zip(cuts, cuts[1:], first_lines) if end > start]


def _merge(parts: list[_Scan]) -> _Scan:
    """Join the scans of consecutive pieces of a file (their per-example arrays stay in file order)."""
    merged = parts[0]
    for part in parts[1:]:
        merged.findings += part.findings
        merged.examples += part.examples
        merged.counts += part.counts
        for name in ("reply_lengths", "token_totals", "token_trained", "lines", "whole", "near", "prompt", "reply"):
            getattr(merged, name).extend(getattr(part, name))
    return merged


def _duplicate_findings(scan: _Scan) -> None:
    """Exact and near duplicates, and prompts answered differently, each pointing at the first occurrence."""
    import numpy as np

    if not scan.lines:
        return
    lines = np.frombuffer(scan.lines, dtype=np.uint32)
    first_whole, first_near, first_prompt = (_first_with_same_key(np.frombuffer(keys, dtype=np.int64))
                                             for keys in (scan.whole, scan.near, scan.prompt))
    replies = np.frombuffer(scan.reply, dtype=np.int64)
    index = np.arange(len(lines))
    add = scan.findings.append
    for i in np.flatnonzero(first_whole != index):
        add(_duplicate(int(lines[i]), int(lines[first_whole[i]])))
    for i in np.flatnonzero((first_near != index) & (first_whole == index)):
        add(_near_duplicate(int(lines[i]), int(lines[first_near[i]])))
    for i in np.flatnonzero((first_prompt != index) & (replies != replies[first_prompt])):
        add(_conflict(int(lines[i]), int(lines[first_prompt[i]])))


def _first_with_same_key(keys):
    """For each position, the position of the first element with the same key."""
    import numpy as np

    order = np.argsort(keys, kind="stable")  # equal keys stay in file order, so a group starts with its first
    ordered = keys[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    group_first = order[np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))]
    first = np.empty_like(order)
    first[order] = group_first
    return first


def _scan_range(path: Path, start: int, end: int | None, first_line: int, counter, limit, progress) -> _Scan:
    """One pass over a byte range of a file: findings and what the statistics need."""
    scan = _Scan()
    add = scan.findings.append
    pending: list[tuple[int, list[dict]]] = []
    for line, position, raw in _raw_lines(path, start, end, first_line):
        record, unreadable = _parse(raw)
        if unreadable:
            add(Finding("error", unreadable[0], line, "", unreadable[1]))
            continue
        scan.examples += 1
        errors = example_errors(record)
        for code, where, message in errors:
            add(Finding("error", code, line, where, message))
        if errors:
            continue
        messages = record["messages"]
        roles = Counter(m.get("role") for m in messages)
        scan.counts["multi_turn"] += roles["assistant"] > 1
        scan.counts["missing_system"] += roles["system"] + roles["developer"] == 0  # developer: OpenAI's new name
        scan.counts["missing_user"] += roles["user"] == 0
        for index, message in enumerate(messages):
            reply = content_text(message.get("content"))
            if message.get("role") != "assistant" or reply is None or (not reply and _calls_a_tool(message)):
                continue
            length = len(reply)
            scan.reply_lengths.append(length)
            if length < REPLY_MIN_CHARS or length > REPLY_MAX_CHARS:
                code = "reply_too_short" if length < REPLY_MIN_CHARS else "reply_too_long"
                add(Finding("warning", code, line, f"messages[{index}].content",
                            f"assistant reply of {length} characters; the recommended bounds are "
                            f"{REPLY_MIN_CHARS}–{REPLY_MAX_CHARS} characters"))
        for name, value in zip(("whole", "near", "prompt", "reply"), fingerprints(messages)):
            getattr(scan, name).append(value)
        scan.lines.append(line)
        if counter:
            pending.append((line, messages))
            if len(pending) >= BATCH:
                _count_tokens(pending, counter, limit, scan)
                pending = []
                if progress:
                    progress(position - start)
    if counter:
        _count_tokens(pending, counter, limit, scan)
    if progress and scan.examples:
        progress(position - start)
    return scan


def _duplicate(line: int, first: int) -> Finding:
    return Finding("warning", "duplicate_example", line, "messages", f"same conversation as line {first}")


def _near_duplicate(line: int, first: int) -> Finding:
    return Finding("warning", "near_duplicate_example", line, "messages",
                   f"same conversation as line {first} apart from punctuation, digits or spacing")


def _conflict(line: int, first: int) -> Finding:
    return Finding("warning", "conflicting_answers", line, "messages",
                   f"same prompt as line {first} with a different answer")


def _count_tokens(pending: list[tuple[int, list[dict]]], counter, limit: int | None, scan: _Scan) -> None:
    """Token counts for a batch of examples, with a warning for each one the limit would cut."""
    if not pending:
        return
    for (line, _), count in zip(pending, counter.count_batch([messages for _, messages in pending])):
        scan.token_totals.append(count.total)
        scan.token_trained.append(count.trained)
        if limit and count.total > limit:
            scan.findings.append(Finding(
                "warning", "example_too_long", line, "messages",
                f"{count.total} tokens; over the limit of {limit}, so training cuts the last "
                f"{count.total - limit} — the end of the conversation, replies included. Shorten it "
                "or raise --max-tokens"))


def _file_level_findings(scan: _Scan) -> None:
    add = scan.findings.append
    if scan.examples == 0 and not scan.findings:
        add(Finding("error", "empty_file", 0, "", "the file holds no examples"))
    elif 0 < scan.examples < OPENAI_MIN_EXAMPLES:
        add(Finding("error", "too_few_examples", 0, "", f"{scan.examples} examples; OpenAI requires at least "
                    f"{OPENAI_MIN_EXAMPLES}"))
    elif scan.examples < SIGNAL_MIN_EXAMPLES:
        add(Finding("warning", "few_examples", 0, "", f"{scan.examples} examples: below {SIGNAL_MIN_EXAMPLES} there "
                    "is not enough signal; 100–500 good ones is the usual recommendation"))
    for key, code, what in (("missing_system", "missing_system_message", "system"),
                            ("missing_user", "missing_user_message", "user")):
        if scan.counts[key]:
            add(Finding("warning", code, 0, "", f"{scan.counts[key]} example(s) have no {what} message"))


def distribution(values) -> dict:
    """min, mean, median, p90, p95, max and count of a list of numbers."""
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1), "p50": pick(0.5),
            "p90": pick(0.9), "p95": pick(0.95), "max": ordered[-1], "count": len(ordered)}
