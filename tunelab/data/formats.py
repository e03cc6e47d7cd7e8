"""Convert common training-data shapes into OpenAI chat JSONL, saying what was dropped and why.

    tunelab data convert raw.csv --out train.jsonl --system "You are a support agent for TechCorp."

Formats (`--format auto` looks at the first record):
- `input-output`: records with an input and an ideal output (`input`/`ideal_output` by default; other
  column names with `--input-column`/`--output-column`), from CSV, JSONL or JSON;
- `alpaca`: `instruction`, optional `input`, `output` (and LLaMA-Factory's optional `system`, `history`);
- `sharegpt`: `conversations` of `{"from", "value"}` (`human`/`gpt`/`system`, as FastChat writes them), with
  LLaMA-Factory's tool use: `function_call` turns become assistant `tool_calls`, `observation` turns `tool`
  messages, and the record's `tools` (a list or a JSON string of one) OpenAI's `tools`;
- `openai`: `{"messages": [...]}` already; each record is validated as `tunelab data validate` would, and
  `--system` adds a system message where there is none;
- `trl` with `prompt`/`completion`: TRL's prompt-completion data (also OpenAI's legacy completion format), as
  text (a user message and the assistant's reply) or as conversations (the prompt's messages, then the
  completion's assistant messages).
Preference pairs (for `--method dpo`) become OpenAI's preference lines, `{"input": {"messages": [...]},
"preferred_output": [assistant], "non_preferred_output": [assistant]}`:
- `trl`: TRL's `prompt`/`chosen`/`rejected`, as text (the prompt becomes a user message) or as
  conversations (lists of messages); without `prompt`, the conversations' shared messages before their
  last one are the prompt (TRL's implicit prompt);
- `sharegpt` with `chosen`/`rejected`: LLaMA-Factory's ranking data in ShareGPT form — `conversations` as the prompt,
  `chosen` and `rejected` each one `{"from": "gpt", "value": …}` turn;
- `alpaca` with `chosen`/`rejected`: LLaMA-Factory's ranking data in Alpaca form — `instruction`, `input`, `chosen`, `rejected`;
- `openai` with `input` and the outputs: OpenAI's preference lines already (either spelling), validated.
A pair whose outputs are not one assistant message each is dropped with its line: OpenAI's DPO is a
one-turn preference.
A file is JSONL, CSV, a JSON list of records, or one JSON record, in UTF-8 unless `--encoding` says otherwise
(a byte that is not UTF-8 is named with its line). Every record becomes `{"messages": [system?, user,
assistant, ...]}` (plus `tools`), and keeps its `metadata` object; with `--metadata-column [KEY=]COLUMN`
a column (or key) of the source is carried into `metadata` too — `tags` split on commas into the list that
`tunelab eval` slices results by.

Nothing is lost quietly. A record that cannot be converted is dropped and reported with its line and the
reason (for a JSON list, the line its record starts on); a part of a kept record that has no place in chat
JSONL (an extra column, an unknown field) is reported as not carried, with its lines. A record with images
is dropped: this model reads text only, and a reply that describes an image it cannot see teaches it to
invent. The output is written to a temporary file and renamed into place, and only when at least one
conversation converted.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.conversation.preference import OLDER_SPELLING, OUTPUTS, preference_problems, with_current_spelling
from tunelab.conversation.schema import content_text, describe, example_problems, reject_constant
from tunelab.conversation.shapes import detect_format
from tunelab.core.files import OutputError, atomic_path, check_output_path

FORMATS = ("auto", "openai", "input-output", "alpaca", "sharegpt", "trl")
PREFERENCE_FORMATS = ("openai-preference", "trl-preference", "sharegpt-ranking", "alpaca-ranking")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
# Record fields each format carries; any other field is reported as not carried.
CARRIED = {"openai": {"messages", "tools", "parallel_tool_calls", "metadata"},
           "alpaca": {"instruction", "input", "output", "system", "history", "metadata"},
           "sharegpt": {"conversations", "system", "tools", "metadata"},
           "openai-preference": {"input", *OUTPUTS, *OLDER_SPELLING, "metadata"},
           "trl-preference": {"prompt", "chosen", "rejected", "metadata"},
           "trl-completion": {"prompt", "completion", "metadata"},
           "sharegpt-ranking": {"conversations", "chosen", "rejected", "system", "tools", "metadata"},
           "alpaca-ranking": {"instruction", "input", "chosen", "rejected", "system", "history", "metadata"}}
IMAGE_FIELDS = ("images", "image", "videos", "audios")


@dataclass
class ConversionReport:
    source: str
    out: str
    format: str
    written: int = 0
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason): records not converted
    not_carried: list[tuple[int, str]] = field(default_factory=list)  # (line, what): parts of kept records
    pairs: int = 0  # of the written lines, preference pairs

    def dropped_by_reason(self) -> Counter:
        return Counter(reason for _, reason in self.dropped)

    def not_carried_by_what(self) -> Counter:
        return Counter(what for _, what in self.not_carried)

    def to_dict(self) -> dict:
        return {"source": self.source, "out": self.out, "format": self.format, "written": self.written,
                "preference_pairs": self.pairs,
                "dropped": [{"line": line, "reason": reason} for line, reason in self.dropped],
                "not_carried": [{"line": line, "what": what} for line, what in self.not_carried]}


class ConversionError(ValueError):
    """The input as a whole cannot be converted (unreadable, or of no recognisable format)."""


@dataclass
class Converted:
    """One record's conversion: the conversation, or why there is none; and what of it was left behind."""

    conversation: dict | None = None
    reason: str | None = None
    not_carried: list[str] = field(default_factory=list)


def read_records(path: Path, encoding: str = "utf-8"):
    """(line number, record) for each record of a CSV, JSONL, JSON-list or one-record JSON file.

    A JSONL line that does not parse gives (line, None). A JSON document that does not parse, or a CSV or
    JSON file that is not text in `encoding`, raises ConversionError naming the line.
    """
    try:
        codec = codecs.lookup(encoding).name  # an unknown name is said before the file is read
    except LookupError:
        raise ConversionError(f"--encoding {encoding!r}: not an encoding Python knows (e.g. utf-8, latin-1, cp1252)") from None
    codec = "utf-8-sig" if codec == "utf-8" else codec  # a UTF-8 file may open with a byte-order mark
    raw = path.read_bytes()
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(_decoded(path, raw, codec), newline=""), restkey="\ue000extra")
        for row in reader:
            yield reader.line_num, row
        return
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as error:
        if _is_one_document(path, raw[:error.start].decode(codec, errors="replace")):
            _decoded(path, raw, codec)  # raises, naming the line
        text = None  # JSONL with a bad line, reported by line below
    if text is not None and _is_one_document(path, text):
        yield from _document_records(path, text)
        return
    for line, raw_line in enumerate(raw.split(b"\n"), start=1):
        if raw_line.strip():
            try:
                yield line, json.loads(raw_line.decode(codec), parse_constant=reject_constant)
            except (ValueError, RecursionError):  # not JSON, not in the encoding, NaN, or nested too deep
                yield line, None


def _decoded(path: Path, raw: bytes, codec: str) -> str:
    """The file's text, or a ConversionError naming the line and the byte (as it is in the file) that is not
    text in `codec`."""
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        name = "UTF-8" if codec == "utf-8-sig" else codec
        raise ConversionError(f"{path}:{line}: byte 0x{raw[error.start]:02x} (byte {error.start:,} of the file, "
                              f"column {column}) is not {name} text; pass the file's encoding, e.g. "
                              "--encoding latin-1 or --encoding cp1252") from None


def _is_one_document(path: Path, text: str) -> bool:
    """A JSON file (list or one record) rather than JSONL: `.json`, or a text that parses as one value."""
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith("["):
        return True
    if not stripped.startswith("{"):
        return False
    first_line = stripped.split("\n", 1)[0]
    try:  # a JSONL file's first line is a whole record; a pretty-printed record's is not
        json.loads(first_line)
        return False
    except (ValueError, RecursionError):
        return True


def _document_records(path: Path, text: str):
    decoder = json.JSONDecoder(parse_constant=reject_constant)
    start = len(text) - len(text.lstrip())
    try:
        if not text.lstrip().startswith("["):
            record, end = decoder.raw_decode(text, start)
            if text[end:].strip():
                raise json.JSONDecodeError("extra data after the record", text, end)
            yield text.count("\n", 0, start) + 1, record
            return
        # Element by element, so each record's line is known and a bad one is named by its line.
        position, line, counted = start + 1, 1, 0
        while True:
            position = _skip_space(text, position)
            if position < len(text) and text[position] == "]":
                return
            line += text.count("\n", counted, position)
            counted = position
            record, position = decoder.raw_decode(text, position)
            yield line, record
            position = _skip_space(text, position)
            if position < len(text) and text[position] == ",":
                position += 1
            elif position >= len(text) or text[position] != "]":
                raise json.JSONDecodeError("expected , or ] after a record", text, position)
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno})") from None
    except RecursionError:
        raise ConversionError(f"{path}: nested too deeply to read (more than ~1,000 levels of [ or {{)") from None
    except ValueError as error:  # NaN / Infinity
        raise ConversionError(f"{path}: not valid JSON: {error}") from None


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def metadata_columns(specs: list[str]) -> dict[str, str]:
    """`--metadata-column [KEY=]COLUMN` options as {metadata key: source column}."""
    columns = {}
    for spec in specs:
        key, _, column = spec.rpartition("=")
        if not column or (spec.count("=") and not key):
            raise ConversionError(f"--metadata-column {spec!r}: expected COLUMN or KEY=COLUMN, e.g. tags=category")
        columns[key or column] = column
    return columns


def convert_record(record, fmt: str, system: str | None, input_column: str = "input",
                   output_column: str = "ideal_output", metadata: dict[str, str] | None = None) -> Converted:
    """One record as a chat conversation, or why not, and what of it could not be carried. `metadata` maps
    metadata keys to the record's columns carried into the conversation's `metadata`."""
    if not isinstance(record, dict):
        return Converted(reason="not a JSON object (or not valid JSON)")
    fmt = _shape(fmt, record)
    images = [name for name in IMAGE_FIELDS if record.get(name)]
    if images:
        return Converted(reason=f"has {images[0]}: this model reads text only")
    if fmt == "input-output":
        converted = _input_output(record, input_column, output_column)
    elif fmt == "alpaca":
        converted = _alpaca(record, system)
    elif fmt == "sharegpt":
        converted = _sharegpt(record, system)
    elif fmt == "openai":
        converted = _openai(record)
    elif fmt == "trl-completion":
        converted = _trl_completion(record)
    elif fmt in PREFERENCE_FORMATS:
        converted = PREFERENCE_READERS[fmt](record, system)
    else:
        return Converted(reason=f"unknown format {fmt!r}")
    if converted.conversation is None:
        return converted
    metadata = metadata or {}
    if isinstance(record.get("metadata"), dict):
        converted.conversation["metadata"] = dict(record["metadata"])
    elif record.get("metadata") not in (None, ""):
        converted.not_carried.append("`metadata` that is not an object")
    for key, column in metadata.items():
        value = record.get(column)
        if value in (None, ""):
            continue
        if key == "tags" and isinstance(value, str):
            value = [tag.strip() for tag in value.split(",") if tag.strip()]
        converted.conversation.setdefault("metadata", {})[key] = value
    carried = ({input_column, output_column, "metadata"} if fmt == "input-output" else CARRIED[fmt]) | set(metadata.values())
    for name in record:
        if name == "\ue000extra":
            converted.not_carried.append("values past the last CSV column")
        elif name not in carried and record[name] not in (None, ""):
            converted.not_carried.append(f"{'column' if fmt == 'input-output' else 'field'} `{name}`")
    if fmt in PREFERENCE_FORMATS:
        messages = converted.conversation["input"]["messages"]
        if system and not any(m.get("role") in ("system", "developer") for m in messages):
            converted.conversation["input"]["messages"] = [{"role": "system", "content": system}, *messages]
        return converted
    messages = converted.conversation["messages"]
    if not any(m.get("role") == "assistant" for m in messages):
        return Converted(reason="no assistant reply")
    if system and not any(m.get("role") in ("system", "developer") for m in messages):
        converted.conversation["messages"] = [{"role": "system", "content": system}, *messages]
    return converted


def _shape(fmt: str, record: dict) -> str:
    """The reader for a record of a format family: a preference record of OpenAI's, Alpaca's or ShareGPT's
    family is read as pairs; a `trl` record is a pair unless it is a prompt and its completion."""
    if fmt == "trl":
        return "trl-completion" if "completion" in record and "chosen" not in record else "trl-preference"
    if fmt in ("alpaca", "sharegpt") and "chosen" in record and "rejected" in record:
        return f"{fmt}-ranking"
    if fmt == "openai" and "messages" not in record and "input" in record:
        return "openai-preference"
    return fmt


def _input_output(record: dict, input_column: str, output_column: str) -> Converted:
    prompt, reply = record.get(input_column), record.get(output_column)
    if not _text(prompt) or not _text(reply):
        missing = input_column if not _text(prompt) else output_column
        return Converted(reason=f"empty or missing `{missing}`")
    return Converted({"messages": [{"role": "user", "content": str(prompt)},
                                   {"role": "assistant", "content": str(reply)}]})


def _trl_completion(record: dict) -> Converted:
    prompt, completion = record.get("prompt"), record.get("completion")
    if _text(prompt) and _text(completion):
        return Converted({"messages": [{"role": "user", "content": str(prompt)},
                                       {"role": "assistant", "content": str(completion)}]})
    if isinstance(prompt, list) and isinstance(completion, list):
        others = [m for m in completion if not isinstance(m, dict) or m.get("role") != "assistant"]
        if not completion or others:
            return Converted(reason="`completion` must be assistant messages when it is a list; found "
                                    f"{describe(others[0] if others else completion)}")
        return _openai({"messages": [*prompt, *completion]})  # validated as a chat line
    for name, value in (("prompt", prompt), ("completion", completion)):
        if value in (None, "") or isinstance(value, str) and not value.strip():
            return Converted(reason=f"empty or missing `{name}`")
    return Converted(reason=f"`prompt` and `completion` must both be text or both lists of messages; found "
                            f"{describe(prompt)} and {describe(completion)}")


def _alpaca(record: dict, system: str | None) -> Converted:
    instruction, extra, reply = record.get("instruction"), record.get("input"), record.get("output")
    if not _text(instruction) or not _text(reply):
        return Converted(reason=f"empty or missing `{'instruction' if not _text(instruction) else 'output'}`")
    messages = []
    history = record.get("history") or []
    if not isinstance(history, list):
        return Converted(reason=f"`history` must be a list of [prompt, reply] pairs; found {type(history).__name__}")
    for turn in history:
        if not (isinstance(turn, list) and len(turn) == 2 and all(map(_text, turn))):
            return Converted(reason="`history` entries must be [prompt, reply] pairs of text")
        messages += [{"role": "user", "content": str(turn[0])}, {"role": "assistant", "content": str(turn[1])}]
    prompt = f"{instruction}\n\n{extra}" if _text(extra) else str(instruction)
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(reply)}]
    if _text(record.get("system")) and not system:
        messages.insert(0, {"role": "system", "content": str(record["system"])})
    return Converted({"messages": messages})


def _sharegpt(record: dict, system: str | None) -> Converted:
    messages: list[dict] = []
    pending_calls: list[str] = []  # ids of tool calls not yet answered by an observation, in order
    calls_made = 0
    turns = record.get("conversations") or []
    if not isinstance(turns, list):
        return Converted(reason=f"`conversations` must be a list of turns; found {type(turns).__name__}")
    for index, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        where = f"conversations[{index}]"
        if speaker not in SHAREGPT_ROLES:
            return Converted(reason=f"{where}: speaker {speaker!r} is not one of {sorted(SHAREGPT_ROLES)}")
        value = turn.get("value")
        if not _text(value):
            return Converted(reason=f"{where}: empty `value`")
        if "<image>" in str(value):
            return Converted(reason=f"{where}: has an <image> placeholder: this model reads text only")
        if speaker == "function_call":
            calls, problem = _sharegpt_calls(value)
            if problem:
                return Converted(reason=f"{where}: {problem}")
            ids = [f"call_{calls_made + k}" for k in range(len(calls))]
            calls_made += len(calls)
            pending_calls += ids
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": call} for call_id, call in zip(ids, calls)]})
        elif SHAREGPT_ROLES[speaker] == "tool":
            if not pending_calls:
                return Converted(reason=f"{where}: an {speaker} turn with no function call before it to answer")
            messages.append({"role": "tool", "tool_call_id": pending_calls.pop(0), "content": str(value)})
        else:
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": str(value)})
    if _text(record.get("system")) and not system:
        messages.insert(0, {"role": "system", "content": str(record["system"])})
    conversation = {"messages": messages}
    if record.get("tools") not in (None, "", []):
        tools, problem = _sharegpt_tools(record["tools"])
        if problem:
            return Converted(reason=f"tools: {problem}")
        conversation["tools"] = tools
    return Converted(conversation)


def _sharegpt_calls(value) -> tuple[list[dict], str | None]:
    """A `function_call` turn's value ({"name", "arguments"} or a list of them, usually as a JSON string) as
    OpenAI function objects with `arguments` a JSON string."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except (ValueError, RecursionError):
        return [], f"function_call value is not JSON: {describe(value)}"
    calls = parsed if isinstance(parsed, list) else [parsed]
    functions = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return [], f'function_call must be {{"name": …, "arguments": {{…}}}}; found {describe(call)}'
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return [], f"function_call arguments are not JSON: {describe(call.get('arguments'))}"
        if not isinstance(arguments, dict):
            return [], f"function_call arguments must be an object; found {describe(arguments)}"
        functions.append({"name": call["name"], "arguments": json.dumps(arguments, ensure_ascii=False)})
    return functions, None


def _sharegpt_tools(tools) -> tuple[list[dict], str | None]:
    """LLaMA-Factory's `tools` (function definitions, often as a JSON string) as OpenAI's `tools` list."""
    try:
        parsed = json.loads(tools) if isinstance(tools, str) else tools
    except (ValueError, RecursionError):
        return [], f"not JSON: {describe(tools)}"
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        return [], f"must be a list of function definitions; found {describe(parsed)}"
    converted = []
    for tool in parsed:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return [], f"each tool needs a `name`; found {describe(tool)}"
        converted.append({"type": "function", "function": function})
    return converted, None


def _openai(record: dict) -> Converted:
    problems = example_problems(record)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Converted(reason=f"{first.path or 'line'}: {first.message} [{first.code}]{more}")
    return Converted({name: record[name] for name in CARRIED["openai"] - {"metadata"} if name in record})


def _pair(messages: list, preferred, non_preferred, tools=None) -> Converted:
    """OpenAI's preference line from a prompt and two replies, or why it is not a valid one."""
    record = {"input": {"messages": messages, **({"tools": tools} if tools else {})},
              "preferred_output": [{"role": "assistant", "content": preferred}],
              "non_preferred_output": [{"role": "assistant", "content": non_preferred}]}
    problems = preference_problems(record)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Converted(reason=f"{first.path or 'line'}: {first.message} [{first.code}]{more}")
    return Converted(record)


def _one_reply(turns, name: str) -> tuple[str | None, str | None]:
    """The text of an output given as a list of messages (TRL's conversational form): one assistant message."""
    if not isinstance(turns, list) or len(turns) != 1:
        count = f"{len(turns)} messages" if isinstance(turns, list) else describe(turns)
        return None, f"`{name}` holds {count}; a pair's outputs are one assistant message each"
    turn = turns[0]
    if not isinstance(turn, dict) or turn.get("role") != "assistant" or content_text(turn.get("content")) is None:
        return None, f"`{name}` must be one assistant message with text; found {describe(turn)}"
    return content_text(turn["content"]), None


def _trl_preference(record: dict, system: str | None) -> Converted:
    prompt, chosen, rejected = record.get("prompt"), record.get("chosen"), record.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):
        if prompt is None:  # TRL's implicit prompt: what both conversations share before their last message
            if chosen[:-1] != rejected[:-1]:
                return Converted(reason="`chosen` and `rejected` differ before their last message, so the prompt "
                                        "they share is unclear; give it as `prompt`")
            prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        if not isinstance(prompt, list):
            return Converted(reason=f"`prompt` must be a list of messages when the outputs are; found {describe(prompt)}")
        preferred, problem = _one_reply(chosen, "chosen")
        non_preferred, other = _one_reply(rejected, "rejected")
        if problem or other:
            return Converted(reason=problem or other)
        return _pair(list(prompt), preferred, non_preferred)
    if _text(chosen) and _text(rejected):
        if not _text(prompt):
            return Converted(reason="no `prompt`: a pair of plain-text outputs needs its prompt (TRL's implicit "
                                    "prompt is read from conversations only)")
        return _pair([{"role": "user", "content": str(prompt)}], str(chosen), str(rejected))
    return Converted(reason=f"`chosen` and `rejected` must both be text or both lists of messages; found "
                            f"{describe(chosen)} and {describe(rejected)}")


def _ranking_reply(turn, name: str) -> tuple[str | None, str | None]:
    """A LLaMA-Factory ranking output: a `{"from": "gpt", "value": …}` turn (or plain text)."""
    if _text(turn):
        return str(turn), None
    if isinstance(turn, dict) and SHAREGPT_ROLES.get(turn.get("from")) == "assistant" and _text(turn.get("value")):
        return str(turn["value"]), None
    return None, f"`{name}` must be a {{\"from\": \"gpt\", \"value\": …}} turn; found {describe(turn)}"


def _sharegpt_ranking(record: dict, system: str | None) -> Converted:
    return _ranking(record, _sharegpt(record, system))


def _alpaca_ranking(record: dict, system: str | None) -> Converted:
    prompt = _alpaca({**record, "output": "—"}, system)  # the prompt Alpaca's record makes, and a stand-in reply
    if prompt.conversation is not None:
        prompt.conversation["messages"].pop()
    return _ranking(record, prompt)


def _ranking(record: dict, prompt: Converted) -> Converted:
    """A LLaMA-Factory ranking record's pair: the prompt its format made, and its chosen and rejected turns."""
    if prompt.conversation is None:
        return prompt
    preferred, problem = _ranking_reply(record.get("chosen"), "chosen")
    non_preferred, other = _ranking_reply(record.get("rejected"), "rejected")
    if problem or other:
        return Converted(reason=problem or other)
    return _pair(prompt.conversation["messages"], preferred, non_preferred, prompt.conversation.get("tools"))


def _openai_preference(record: dict, system: str | None) -> Converted:
    record = with_current_spelling(record)
    problems = preference_problems(record)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Converted(reason=f"{first.path or 'line'}: {first.message} [{first.code}]{more}")
    return Converted({name: record[name] for name in ("input", *OUTPUTS)})


PREFERENCE_READERS = {"openai-preference": _openai_preference, "trl-preference": _trl_preference,
                      "sharegpt-ranking": _sharegpt_ranking, "alpaca-ranking": _alpaca_ranking}


def _text(value) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool) and bool(str(value).strip())


def convert_file(source: str | Path, out: str | Path, fmt: str = "auto", system: str | None = None,
                 input_column: str = "input", output_column: str = "ideal_output",
                 overwrite: bool = False, encoding: str = "utf-8", metadata: dict[str, str] | None = None
                 ) -> ConversionReport:
    """Convert `source` into chat JSONL at `out`, written to a temporary file and renamed into place.
    `encoding`: the source's text encoding; `metadata`: {metadata key: column} carried into each line.

    `out` is left untouched (not created, not replaced) when nothing converts or anything fails.
    """
    source, out = Path(source), Path(out)
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not source.is_file():
        raise ConversionError(f"{source}: no such file" if not source.exists() else f"{source}: not a regular file")
    try:
        check_output_path(out, overwrite, inputs=[source])
    except OutputError as error:
        raise ConversionError(str(error)) from None
    report = ConversionReport(str(source), str(out), fmt)
    try:
        with atomic_path(out) as temporary, temporary.open("w", encoding="utf-8") as handle:
            for line, record in read_records(source, encoding):
                if report.format == "auto":
                    detected = detect_format(record, input_column, output_column)
                    if detected is None:
                        found = f"; its columns are {', '.join(map(repr, record))}" if isinstance(record, dict) else ""
                        raise ConversionError(
                            f"{source}:{line}: cannot tell the format (expected `messages`, `conversations`, "
                            f"`instruction`/`output`, `prompt`/`completion`, `{input_column}`/`{output_column}`, "
                            "or a preference pair: "
                            f"`chosen`/`rejected` or `input`/`preferred_output`){found}; pass --format or "
                            "--input-column/--output-column")
                    report.format = detected
                if not report.written and not report.dropped and isinstance(record, dict):
                    # The first record names the columns: one asked for that is not there is said once, with
                    # the columns that are (rather than every record dropped for it).
                    wanted = [*([input_column, output_column] if report.format == "input-output" else []),
                              *(metadata or {}).values()]
                    if missing := [name for name in wanted if name not in record]:
                        raise ConversionError(f"{source}:{line}: no column {', '.join(map(repr, missing))}; its "
                                              f"columns are {', '.join(map(repr, record))}")
                converted = convert_record(record, report.format, system, input_column, output_column, metadata)
                if converted.conversation is None:
                    report.dropped.append((line, converted.reason))
                    continue
                report.not_carried += [(line, what) for what in converted.not_carried]
                handle.write(json.dumps(converted.conversation, ensure_ascii=False) + "\n")
                report.written += 1
                report.pairs += "input" in converted.conversation
            if not report.written:
                raise _NothingConverted  # leaves `out` as it was
    except _NothingConverted:
        pass
    except (UnicodeDecodeError, csv.Error) as error:
        raise ConversionError(f"{source}: cannot read it ({error})") from None
    except OSError as error:
        raise ConversionError(f"{out}: cannot write it ({error.strerror or error})") from None
    return report


class _NothingConverted(Exception):
    """No record converted: the output file is not created (or replaced) at all."""
