"""Convert common training-data shapes into OpenAI chat JSONL, saying what was dropped and why.

    tunelab data convert raw.csv --out train.jsonl --system "You are a support agent for TechCorp."

Formats (`--format auto` looks at the first record):
- `input-output`: records with an input and an ideal output (`input`/`ideal_output` by default; other
  column names with `--input-column`/`--output-column`), from CSV, JSONL or a JSON list;
- `alpaca`: `instruction`, optional `input`, `output` (and LLaMA-Factory's optional `system`, `history`);
- `sharegpt`: `conversations` of `{"from", "value"}` (`human`/`gpt`/`system`, as FastChat writes them);
- `openai`: `{"messages": [...]}` already; `--system` adds a system message where there is none.
Every record becomes `{"messages": [system?, user, assistant, ...]}`. Records that cannot be converted are
dropped and reported with their line; the quality rules are `tunelab data validate`'s job.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("auto", "openai", "input-output", "alpaca", "sharegpt")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}


@dataclass
class ConversionReport:
    source: str
    out: str
    format: str
    written: int = 0
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    def dropped_by_reason(self) -> Counter:
        return Counter(reason for _, reason in self.dropped)

    def to_dict(self) -> dict:
        return {"source": self.source, "out": self.out, "format": self.format, "written": self.written,
                "dropped": [{"line": line, "reason": reason} for line, reason in self.dropped]}


class ConversionError(ValueError):
    """The input as a whole cannot be converted (unreadable, or of no recognisable format)."""


def read_records(path: Path):
    """(line number, record) for each record of a CSV, JSONL or JSON-list file; (line, None) if unreadable."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield reader.line_num, row
        return
    with path.open("rb") as handle:
        head = handle.read(1).lstrip()
        handle.seek(0)
        if head == b"[" and path.suffix.lower() == ".json":
            for index, record in enumerate(json.load(handle), start=1):
                yield index, record
            return
        for line, raw in enumerate(handle, start=1):
            if raw.strip():
                try:
                    yield line, json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    yield line, None


def detect_format(record, input_column: str, output_column: str) -> str | None:
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("messages"), list):
        return "openai"
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if input_column in record and output_column in record:
        return "input-output"
    return None


def to_messages(record, fmt: str, system: str | None, input_column: str = "input",
                output_column: str = "ideal_output") -> tuple[list[dict] | None, str | None]:
    """One record as chat messages, or (None, why not)."""
    if not isinstance(record, dict):
        return None, "not a JSON object (or not valid JSON)"
    if fmt == "input-output":
        prompt, reply = record.get(input_column), record.get(output_column)
        if not _text(prompt) or not _text(reply):
            missing = input_column if not _text(prompt) else output_column
            return None, f"empty or missing `{missing}`"
        messages = [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": str(reply)}]
    elif fmt == "alpaca":
        instruction, extra, reply = record.get("instruction"), record.get("input"), record.get("output")
        if not _text(instruction) or not _text(reply):
            return None, f"empty or missing `{'instruction' if not _text(instruction) else 'output'}`"
        messages = []
        for turn in record.get("history") or []:
            if not (isinstance(turn, list) and len(turn) == 2 and all(map(_text, turn))):
                return None, "`history` entries must be [prompt, reply] pairs of text"
            messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
        prompt = f"{instruction}\n\n{extra}" if _text(extra) else instruction
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        if _text(record.get("system")) and not system:
            messages.insert(0, {"role": "system", "content": record["system"]})
    elif fmt == "sharegpt":
        messages = []
        for index, turn in enumerate(record.get("conversations") or []):
            speaker = turn.get("from") if isinstance(turn, dict) else None
            if speaker not in SHAREGPT_ROLES:
                return None, f"conversations[{index}]: speaker {speaker!r} is not one of {sorted(SHAREGPT_ROLES)}"
            if not _text(turn.get("value")):
                return None, f"conversations[{index}]: empty `value`"
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn["value"]})
        if _text(record.get("system")) and not system:
            messages.insert(0, {"role": "system", "content": record["system"]})
    elif fmt == "openai":
        messages = record.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return None, "`messages` must be a list of message objects"
    else:
        return None, f"unknown format {fmt!r}"
    if not any(m.get("role") == "assistant" for m in messages):
        return None, "no assistant reply"
    return _with_system(messages, system), None


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system and not any(m.get("role") == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages


def _text(value) -> bool:
    return isinstance(value, (str, int, float)) and bool(str(value).strip())


def convert_file(source: str | Path, out: str | Path, fmt: str = "auto", system: str | None = None,
                 input_column: str = "input", output_column: str = "ideal_output") -> ConversionReport:
    """Convert `source` into chat JSONL at `out`, written to a temporary file and renamed into place."""
    source, out = Path(source), Path(out)
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not source.is_file():
        raise ConversionError(f"{source}: no such file")
    if out.resolve() == source.resolve():
        raise ConversionError(f"{out}: the output would overwrite the input")
    report = ConversionReport(str(source), str(out), fmt)
    temporary = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            for line, record in read_records(source):
                if report.format == "auto":
                    detected = detect_format(record, input_column, output_column)
                    if detected is None:
                        raise ConversionError(
                            f"{source}:{line}: cannot tell the format (expected `messages`, `conversations`, "
                            f"`instruction`/`output`, or `{input_column}`/`{output_column}`); pass --format "
                            "or --input-column/--output-column")
                    report.format = detected
                messages, reason = to_messages(record, report.format, system, input_column, output_column)
                if messages is None:
                    report.dropped.append((line, reason))
                    continue
                converted = {"messages": messages}
                if report.format == "openai" and record.get("tools") is not None:
                    converted["tools"] = record["tools"]
                handle.write(json.dumps(converted, ensure_ascii=False) + "\n")
                report.written += 1
    except (UnicodeDecodeError, csv.Error, json.JSONDecodeError) as error:
        temporary.unlink(missing_ok=True)
        raise ConversionError(f"{source}: cannot read it ({error})") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(out)
    return report
