"""Validate chat JSONL: every problem in one pass, each with severity, code, line and field path.

    tunelab data validate train.jsonl --validation valid.jsonl [--model M | --target openai:MODEL] [--json]

Each example's format errors are the conversation layer's (`tunelab/conversation/schema.py`: OpenAI's
codes, and ours for tools, weights and content parts); this module adds what needs the whole file:
`invalid_json`, `not_utf8`, `empty_file`, `too_few_examples` as errors, and as warnings the recommended
quality rules: fewer than 50 examples, assistant replies outside 10–2,000 characters, duplicate
conversations, one prompt with conflicting answers, training/validation overlap, examples without a
system or user message, and examples longer than the token limit (`--max-tokens`, else what training
would cut at), with how many tokens would be cut.

A file of preference pairs (OpenAI's `method: dpo` format, `tunelab/conversation/preference.py`) is known
by its first line and checked as pairs: each line's errors with the path inside the pair, a line of the
other format named as `mixed_formats`, and as warnings outputs that are identical or differ only in
whitespace (nothing to learn from), outputs of very unequal length, and a file whose preferred outputs are
nearly always the longer ones (DPO then learns length). Tokens are counted for the prompt and each output.

Token statistics and the cost come from `tokens.py` and `cost.py`. The file is streamed in batches: what
is kept per example is a few integers (its token lengths and hashes for the duplicate checks).
"""

from __future__ import annotations

import json
import os
import threading
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from hashlib import blake2b
from pathlib import Path

from tunelab.conversation.preference import PreferencePair, is_preference, preference_problems, read_pair
from tunelab.conversation.problems import Problem
from tunelab.conversation.reader import parse_line, raw_lines
from tunelab.conversation.reinforcement import is_task, read_task, task_problems
from tunelab.conversation.schema import calls_a_tool, content_text, example_problems, last_assistant_index
from tunelab.conversation.shapes import conversion_hint
from tunelab.core.events import NO_EVENTS, Events

OPENAI_MIN_EXAMPLES = 10  # OpenAI rejects files with fewer
SIGNAL_MIN_EXAMPLES = 50  # fewer than 50 examples: not enough signal
REPLY_MIN_CHARS, REPLY_MAX_CHARS = 10, 2000  # recommended bounds for an assistant reply
BATCH = 1000  # examples tokenized together
UNEQUAL_RATIO, UNEQUAL_MIN_CHARS = 3, 200  # outputs this many times longer, and by this many characters
LENGTH_BIAS_FRACTION = 0.8  # preferred outputs longer in this share of pairs (of at least LENGTH_BIAS_MIN_PAIRS)
LENGTH_BIAS_MIN_PAIRS = 20


@dataclass
class ValidationReport:
    file: str
    examples: int = 0
    findings: list[Problem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    cost: dict | None = None
    token_lengths: array = field(default_factory=lambda: array("I"))  # per valid example, in file order

    @property
    def errors(self) -> list[Problem]:
        return [f for f in self.findings if f.severity == "error"]

    def to_dict(self) -> dict:
        return {"file": self.file, "examples": self.examples, "findings": [asdict(f) for f in self.findings],
                "stats": self.stats, "cost": self.cost}


# Deleted before comparing texts for near-duplicates: ASCII punctuation, digits and whitespace.
_IGNORED_FOR_NEAR = str.maketrans("", "", "".join(chr(c) for c in range(128) if not chr(c).isalpha()))


def conversation_texts(messages: list[dict]) -> tuple[str, str, str]:
    """The prompt (everything before the last assistant message), that reply, and what follows, as text."""
    last = last_assistant_index(messages)
    as_text = lambda part: "\n".join(f"{m.get('role')}: {_message_text(m)}" for m in part)  # noqa: E731
    return as_text(messages[:last]), _message_text(messages[last]), as_text(messages[last + 1:])


def _message_text(message: dict) -> str:
    """A message's text and its tool calls (names and arguments), so calls count when comparing examples."""
    text = str(message.get("content") or "")
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {} if isinstance(call, dict) else {}
        text += f"\n[call {function.get('name')} {function.get('arguments')}]"
    return text


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that every process computes alike (Python's own `hash` of a string is seeded
    afresh in each process, so the hashes of a file's pieces scanned in spawned processes would not meet)."""
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little", signed=True)


def fingerprints(messages: list[dict]) -> tuple[int, int, int, int]:
    """Hashes of the conversation (case ignored), of it with punctuation, digits and spacing also ignored
    (near-duplicates), of its prompt, and of its last reply (both compared as near-duplicates are)."""
    prompt, reply, later = (text.lower() for text in conversation_texts(messages))
    whole = f"{prompt}\n{reply}\n{later}"
    return (stable_hash(whole), stable_hash(whole.translate(_IGNORED_FOR_NEAR)),
            stable_hash(prompt.translate(_IGNORED_FOR_NEAR)), stable_hash(reply.translate(_IGNORED_FOR_NEAR)))


@dataclass
class _Scan:
    """What one pass over (part of) a file found; parts of a file scanned in parallel are merged."""

    kind: str = "chat"  # or "preference" or "tasks": the file's format, from its first line
    findings: list[Problem] = field(default_factory=list)
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
    # Preference pairs: the tokens of each pair's prompt and of its two outputs, and its outputs' characters.
    token_prompt: array = field(default_factory=lambda: array("I"))
    token_preferred: array = field(default_factory=lambda: array("I"))
    token_non_preferred: array = field(default_factory=lambda: array("I"))
    preferred_chars: array = field(default_factory=lambda: array("I"))
    non_preferred_chars: array = field(default_factory=lambda: array("I"))


PER_EXAMPLE_ARRAYS = ("reply_lengths", "token_totals", "token_trained", "lines", "whole", "near", "prompt", "reply",
                      "token_prompt", "token_preferred", "token_non_preferred", "preferred_chars", "non_preferred_chars")

PARALLEL_FROM_BYTES = 8_000_000  # smaller files are scanned in one process: forking costs more than it saves


def validate_file(path: str | Path, validation: str | Path | None = None, counter=None,
                  max_tokens: int | None = None, events: Events = NO_EVENTS,
                  shown_as: str | None = None) -> ValidationReport:
    """All findings and statistics for a training file, and its overlap with a validation file if given.

    `counter` (from `tokens.py`) adds token statistics, truncation warnings and the cost; `max_tokens` is
    the limit (default: the counter's own, i.e. what training or OpenAI would cut at). `events` get the
    progress of the reading, in bytes. `shown_as`: the file's name in advice that names it (a server names an
    upload by the name the client sent, not by its own path to the copy).
    """
    path = Path(path)
    limit = max_tokens or (counter.default_limit if counter else None)
    report = ValidationReport(str(path))
    if not path.is_file():
        report.findings.append(Problem("error", "empty_file", 0, "", "no such file"))
        return report
    with events.progress("validate", total=path.stat().st_size, description="checking", unit="bytes",
                         transient=True) as bar:
        scan = _scan_file(path, counter, limit, bar.update)
    _duplicate_findings(scan)
    _file_level_findings(scan)
    if scan.kind != "tasks" and any(finding.severity == "error" for finding in scan.findings):
        _another_shape(path, scan, shown_as or str(path))
    scan.findings.sort(key=lambda finding: finding.line)
    report.examples, report.findings = scan.examples, scan.findings
    report.stats = {
        "kind": scan.kind,
        "examples": scan.examples,
        "valid_examples": len(scan.lines),
        "multi_turn": scan.counts["multi_turn"],
        "assistant_reply_chars": distribution(scan.reply_lengths),
    }
    if scan.kind == "preference":
        report.stats["preferred_chars"] = distribution(scan.preferred_chars)
        report.stats["non_preferred_chars"] = distribution(scan.non_preferred_chars)
        report.stats["preferred_longer"] = scan.counts["preferred_longer"]
    if counter:
        report.token_lengths = scan.token_totals
        cut = [total - limit for total in scan.token_totals if limit and total > limit]
        report.stats["tokens"] = {
            "counted_with": counter.label, "exact": counter.exact, "limit": limit,
            "total": sum(scan.token_totals), "trained": sum(scan.token_trained),
            "per_example": distribution(scan.token_totals), "trained_per_example": distribution(scan.token_trained),
            "examples_over_limit": len(cut), "tokens_cut": sum(cut),
        }
        if scan.kind == "preference":  # a pair trains on two sequences: its prompt with each output
            report.stats["tokens"].update({"prompt": distribution(scan.token_prompt),
                                           "preferred": distribution(scan.token_preferred),
                                           "non_preferred": distribution(scan.token_non_preferred)})
        if scan.token_totals:
            from tunelab.data.cost import estimate

            report.cost = estimate(counter, scan.token_totals, limit)
    if validation:
        _check_validation_file(Path(validation), scan, report)
    return report


def _check_validation_file(validation: Path, training: _Scan, report: ValidationReport) -> None:
    """The validation file's errors, and its prompts that also occur in training (leakage)."""
    held_out = _scan_file(validation, None, None, None) if validation.is_file() else _Scan(
        findings=[Problem("error", "empty_file", 0, "", "no such file")])
    if held_out.examples == 0 and not held_out.findings:
        held_out.findings.append(Problem("error", "empty_file", 0, "", "the file holds no examples"))
    for finding in held_out.findings:  # OpenAI's 10-example minimum is for training files only
        if finding.severity == "error":
            finding.file = str(validation)
            report.findings.append(finding)
    training_prompts = set(training.prompt)
    for line, prompt in zip(held_out.lines, held_out.prompt):
        if prompt in training_prompts:
            report.findings.append(Problem("warning", "validation_overlap", line, "messages",
                                           f"{validation}:{line} has the same prompt as a training example "
                                           "(leakage: validation scores would be optimistic)", str(validation)))


def file_kind(path: Path) -> str:
    """"preference" when the file's first readable line is a preference pair, "tasks" when it is a
    reinforcement task (a prompt awaiting its reply, with the keys a grader reads), else "chat"."""
    _, record = _first_readable(path)
    return "preference" if is_preference(record) else "tasks" if is_task(record) else "chat"


def _first_readable(path: Path) -> tuple[int, object]:
    """(line number, record) of the file's first line that parses; (0, None) when none does."""
    for line, _, raw in raw_lines(path, 0, None, 1):
        record, unreadable = parse_line(raw)
        if not unreadable:
            return line, record
    return 0, None


def _scan_file(path: Path, counter, limit, progress) -> _Scan:
    """Scan a file, in one process per core when it is big enough to be worth it."""
    size = path.stat().st_size
    kind = file_kind(path)
    workers = min(os.cpu_count() or 1, 8) if size >= PARALLEL_FROM_BYTES else 1
    if workers == 1:
        return _scan_range(path, 0, None, 1, counter, limit, progress, kind)
    ranges = _line_aligned_ranges(path, workers)
    import multiprocessing

    # Forked from the main thread, the workers share the loaded tokenizer rather than unpickling a copy. A
    # fork copies only the thread that makes it, though, and a lock another thread held at that moment stays
    # held in the child for good: the server scans uploads in its request threads, beside others (an upload's
    # scan once waited 300 s so), and from any thread but the main one the workers start afresh instead.
    in_main_thread = threading.current_thread() is threading.main_thread()
    context = multiprocessing.get_context("fork" if in_main_thread else "spawn")
    bytes_read = context.Value("q", 0)
    with context.Pool(len(ranges), initializer=_take_worker_state, initargs=(counter, limit, bytes_read, kind)) as pool:
        pending = pool.starmap_async(_scan_range_in_worker, [(path, *r) for r in ranges], chunksize=1)
        while not pending.ready():
            pending.wait(0.2)
            if progress:
                progress(bytes_read.value)
        parts = pending.get()
    return _merge(parts)


_worker_state = None  # in a scanning worker: (token counter, limit, bytes read by all workers, file kind)


def _take_worker_state(*state) -> None:
    global _worker_state
    _worker_state = state


def _scan_range_in_worker(path, start, end, first_line) -> _Scan:
    counter, limit, bytes_read, kind = _worker_state
    reported = 0

    def report_bytes(count: int) -> None:  # count: bytes of this range read so far
        nonlocal reported
        with bytes_read.get_lock():
            bytes_read.value += count - reported
        reported = count

    return _scan_range(path, start, end, first_line, counter, limit, report_bytes, kind)


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
        for name in PER_EXAMPLE_ARRAYS:
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
    if scan.kind == "chat":  # several pairs per prompt is how preference data is made
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


def _scan_range(path: Path, start: int, end: int | None, first_line: int, counter, limit, progress,
                kind: str = "chat") -> _Scan:
    """One pass over a byte range of a file: findings and what the statistics need."""
    scan = _Scan(kind=kind)
    add = scan.findings.append
    count = _count_pair_tokens if kind == "preference" else _count_tokens
    pending: list[tuple[int, list[dict] | PreferencePair]] = []  # valid examples (or pairs) not yet counted
    for line, position, raw in raw_lines(path, start, end, first_line):
        record, unreadable = parse_line(raw)
        if unreadable:
            add(Problem("error", unreadable[0], line, "", unreadable[1]))
            continue
        scan.examples += 1
        if is_preference(record) != (kind == "preference") and isinstance(record, dict):
            add(Problem("error", "mixed_formats", line, "", f"a {'preference pair' if kind == 'chat' else 'chat example'} "
                        f"in a file of {'chat examples' if kind == 'chat' else 'preference pairs'} (as its first "
                        "line is); a file holds one format"))
            continue
        scan_line = {"preference": _scan_pair, "tasks": _scan_task}.get(kind, _scan_example)
        item = scan_line(record, line, scan)
        if item is None or not counter:
            continue
        pending.append((line, item))
        if len(pending) >= BATCH:
            count(pending, counter, limit, scan)
            pending = []
            if progress:
                progress(position - start)
    if counter:
        count(pending, counter, limit, scan)
    if progress and scan.examples:
        progress(position - start)
    return scan


def _scan_example(record, line: int, scan: _Scan) -> list[dict] | None:
    """A chat line's errors and warnings; its messages when it is valid."""
    add = scan.findings.append
    errors = example_problems(record, line)
    scan.findings += errors
    if errors:
        return None
    messages = record["messages"]
    roles = Counter(m.get("role") for m in messages)
    scan.counts["multi_turn"] += roles["assistant"] > 1
    scan.counts["missing_system"] += roles["system"] + roles["developer"] == 0  # developer: OpenAI's new name
    scan.counts["missing_user"] += roles["user"] == 0
    for index, message in enumerate(messages):
        reply = content_text(message.get("content"))
        if message.get("role") != "assistant" or reply is None or (not reply and calls_a_tool(message)):
            continue
        length = len(reply)
        scan.reply_lengths.append(length)
        if length < REPLY_MIN_CHARS or length > REPLY_MAX_CHARS:
            code = "reply_too_short" if length < REPLY_MIN_CHARS else "reply_too_long"
            add(Problem("warning", code, line, f"messages[{index}].content",
                        f"assistant reply of {length} characters; the recommended bounds are "
                        f"{REPLY_MIN_CHARS}–{REPLY_MAX_CHARS} characters"))
    for name, value in zip(("whole", "near", "prompt", "reply"), fingerprints(messages)):
        getattr(scan, name).append(value)
    scan.lines.append(line)
    return messages


def _scan_task(record, line: int, scan: _Scan) -> list[dict] | None:
    """A reinforcement task's errors; its prompt when it is valid (its tokens are the prompt's: the replies are
    sampled in training)."""
    errors = task_problems(record, line)
    scan.findings += errors
    if errors:
        return None
    task = read_task(record)
    roles = Counter(m.get("role") for m in task.messages)
    scan.counts["missing_user"] += roles["user"] == 0
    whole = json.dumps(record, sort_keys=True)
    scan.whole.append(stable_hash(whole))
    scan.near.append(stable_hash(whole.lower()))
    scan.prompt.append(stable_hash(json.dumps(task.messages, sort_keys=True).lower()))
    scan.reply.append(stable_hash(json.dumps(task.item, sort_keys=True)))
    scan.lines.append(line)
    return task.messages


def _scan_pair(record, line: int, scan: _Scan) -> PreferencePair | None:
    """A preference line's errors and warnings; the pair when it is valid."""
    errors = preference_problems(record, line)
    scan.findings += errors
    if errors:
        return None
    pair = read_pair(record)
    add = scan.findings.append
    preferred, non_preferred = pair.preferred, pair.non_preferred
    if preferred == non_preferred:
        add(Problem("warning", "identical_outputs", line, "non_preferred_output[0].content",
                    "the same text as the preferred output: the pair teaches nothing"))
    elif preferred.split() == non_preferred.split():
        add(Problem("warning", "outputs_differ_only_in_whitespace", line, "non_preferred_output[0].content",
                    "differs from the preferred output only in spacing or line breaks: the model learns to prefer "
                    "whitespace"))
    longer, shorter = max(len(preferred), len(non_preferred)), min(len(preferred), len(non_preferred))
    if longer >= UNEQUAL_RATIO * max(shorter, 1) and longer - shorter >= UNEQUAL_MIN_CHARS:
        which = "preferred" if len(preferred) > len(non_preferred) else "non-preferred"
        add(Problem("warning", "unequal_output_lengths", line, "",
                    f"the {which} output is {longer / max(shorter, 1):.1f}× as long ({len(preferred)} and "
                    f"{len(non_preferred)} characters): pairs like this teach length as much as content"))
    scan.counts["preferred_longer"] += len(preferred) > len(non_preferred)
    roles = Counter(m.get("role") for m in pair.messages)
    scan.counts["missing_system"] += roles["system"] + roles["developer"] == 0
    scan.counts["missing_user"] += roles["user"] == 0
    scan.preferred_chars.append(len(preferred))
    scan.non_preferred_chars.append(len(non_preferred))
    for name, value in zip(("whole", "near", "prompt", "reply"), _pair_fingerprints(pair)):
        getattr(scan, name).append(value)
    scan.lines.append(line)
    return pair


def _pair_fingerprints(pair: PreferencePair) -> tuple[int, int, int, int]:
    """As `fingerprints`, for a pair: the whole pair, it with punctuation and spacing ignored, its prompt, its
    two outputs."""
    chosen = fingerprints(pair.conversation(preferred=True)["messages"])
    rejected = fingerprints(pair.conversation(preferred=False)["messages"])
    return hash((chosen[0], rejected[0])), hash((chosen[1], rejected[1])), chosen[2], hash((chosen[3], rejected[3]))


def _count_pair_tokens(pairs: list[tuple[int, PreferencePair]], counter, limit: int | None, scan: _Scan) -> None:
    """Tokens of each pair's prompt and outputs (each output rendered after the prompt, as it trains)."""
    if not pairs:
        return
    conversations = [pair.conversation(preferred)["messages"] for _, pair in pairs for preferred in (True, False)]
    counts = counter.count_batch(conversations)
    for (line, _), chosen, rejected in zip(pairs, counts[0::2], counts[1::2]):
        scan.token_prompt.append(chosen.total - chosen.trained)
        scan.token_preferred.append(chosen.trained)
        scan.token_non_preferred.append(rejected.trained)
        scan.token_totals.append(chosen.total + rejected.total)
        scan.token_trained.append(chosen.trained + rejected.trained)
        longest = max(chosen.total, rejected.total)
        if limit and longest > limit:
            scan.findings.append(Problem(
                "warning", "example_too_long", line, "",
                f"the prompt with its longer output is {longest} tokens; over the limit of {limit}, so training "
                f"cuts the last {longest - limit} — the output's end. Shorten it or raise --max-tokens"))


def _duplicate(line: int, first: int) -> Problem:
    return Problem("warning", "duplicate_example", line, "messages", f"same conversation as line {first}")


def _near_duplicate(line: int, first: int) -> Problem:
    return Problem("warning", "near_duplicate_example", line, "messages",
                   f"same conversation as line {first} apart from punctuation, digits or spacing")


def _conflict(line: int, first: int) -> Problem:
    return Problem("warning", "conflicting_answers", line, "messages",
                   f"same prompt as line {first} with a different answer")


def _count_tokens(pending: list[tuple[int, list[dict]]], counter, limit: int | None, scan: _Scan) -> None:
    """Token counts for a batch of examples, with a warning for each one the limit would cut."""
    if not pending:
        return
    for (line, _), count in zip(pending, counter.count_batch([messages for _, messages in pending])):
        scan.token_totals.append(count.total)
        scan.token_trained.append(count.trained)
        if limit and count.total > limit:
            scan.findings.append(Problem(
                "warning", "example_too_long", line, "messages",
                f"{count.total} tokens; over the limit of {limit}, so training cuts the last "
                f"{count.total - limit} — the end of the conversation, replies included. Shorten it "
                "or raise --max-tokens"))


def _file_level_findings(scan: _Scan) -> None:
    add = scan.findings.append
    if scan.examples == 0 and not scan.findings:
        add(Problem("error", "empty_file", 0, "", "the file holds no examples"))
    elif 0 < scan.examples < OPENAI_MIN_EXAMPLES:
        add(Problem("error", "too_few_examples", 0, "", f"{scan.examples} examples; OpenAI requires at least "
                    f"{OPENAI_MIN_EXAMPLES}"))
    elif scan.examples < SIGNAL_MIN_EXAMPLES:
        add(Problem("warning", "few_examples", 0, "", f"{scan.examples} examples: below {SIGNAL_MIN_EXAMPLES} there "
                    "is not enough signal; 100–500 good ones is the usual recommendation"))
    pairs = len(scan.preferred_chars)
    if scan.kind == "preference" and pairs >= LENGTH_BIAS_MIN_PAIRS and \
            scan.counts["preferred_longer"] >= LENGTH_BIAS_FRACTION * pairs:
        add(Problem("warning", "length_bias", 0, "", f"the preferred output is the longer one in "
                    f"{scan.counts['preferred_longer']} of {pairs} pairs: DPO will learn to write longer as much as "
                    "better; add pairs where the shorter output is preferred"))
    for key, code, what in (("missing_system", "missing_system_message", "system"),
                            ("missing_user", "missing_user_message", "user")):
        if scan.counts[key]:
            add(Problem("warning", code, 0, "", f"{scan.counts[key]} example(s) have no {what} message"))


def _another_shape(path: Path, scan: _Scan, shown_as: str) -> None:
    """A file in another training-data shape (Alpaca, ShareGPT, TRL's) fails every line for want of `messages`:
    when its first line is of such a shape (the one `data convert` goes by), the shape is named with the
    command that converts the file."""
    line, record = _first_readable(path)
    if hint := conversion_hint(shown_as, record):
        scan.findings.append(Problem("warning", "other_format", line, "", f"this line is {hint}"))


def distribution(values) -> dict:
    """min, mean, median, p90, p95, max and count of a list of numbers."""
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1), "p50": pick(0.5),
            "p90": pick(0.9), "p95": pick(0.95), "max": ordered[-1], "count": len(ordered)}
