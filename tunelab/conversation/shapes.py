"""Which shape of training data a record has: OpenAI's own, or another tool's that `tunelab data convert`
turns into it (Alpaca, ShareGPT, TRL's, input/ideal_output records).

    detect_format({"instruction": "Say hi.", "output": "Hi."})   # "alpaca"
    conversion_hint("theirs.jsonl", record)   # "Alpaca data, not chat JSONL; convert the file first: …"

The readers and the validator name a file of another shape once, with the command that converts it, rather
than finding each of its lines without `messages`.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tunelab.conversation.preference import OLDER_SPELLING, OUTPUTS

# How the hint names each shape `detect_format` finds besides OpenAI's.
SHAPE_NAMES = {"alpaca": "Alpaca", "sharegpt": "ShareGPT", "input-output": "input/ideal_output",
               "trl": "TRL's preference", "trl-completion": "TRL's prompt-completion"}


def detect_format(record, input_column: str = "input", output_column: str = "ideal_output") -> str | None:
    """The `--format` of `data convert` that reads `record`: openai, trl, alpaca, sharegpt or input-output
    (records with `input_column` and `output_column`); None when it is none of them."""
    if not isinstance(record, dict):
        return None
    if "input" in record and any(key in record for key in (*OUTPUTS, *OLDER_SPELLING)):
        return "openai"
    if "chosen" in record and "rejected" in record:
        if isinstance(record.get("conversations"), list):
            return "sharegpt"
        return "alpaca" if "instruction" in record else "trl"
    if isinstance(record.get("messages"), list):
        return "openai"
    if "prompt" in record and "completion" in record:
        return "trl"
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if input_column in record and output_column in record:
        return "input-output"
    return None


def conversion_hint(path: str | Path, record) -> str | None:
    """What `record` (a file's first line) is and the command that converts its file, when it is another
    tool's shape; None for OpenAI's own or a shape `data convert` does not know."""
    shape = detect_format(record)
    if shape == "trl" and "completion" in record:
        shape = "trl-completion"
    if shape not in SHAPE_NAMES:
        return None
    pairs = "chosen" in record and "rejected" in record
    path = Path(path)
    converted = path.with_name(f"{path.stem}.{'pairs' if pairs else 'chat'}.jsonl")
    return (f"{SHAPE_NAMES[shape]} data, not {'OpenAI preference' if pairs else 'chat'} JSONL; convert the file "
            f"first: tunelab data convert {shlex.quote(str(path))} --out {shlex.quote(str(converted))}")
