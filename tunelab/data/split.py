"""Split chat JSONL into training and held-out files, so that nothing is on both sides.

    tunelab data split all.jsonl --test-size 0.2 --seed 42 --out-dir data/

Duplicate and near-duplicate conversations (equal apart from case, punctuation, digits or spacing, as the
validator defines them) are removed first; the first copy is kept. Then conversations are grouped by
prompt (case and spacing ignored) and whole groups go to one side, so a prompt asked twice with different
answers cannot be trained on and tested on at once. Groups are shuffled with the seed, and the held-out side is filled to the requested
size. The two files are written to temporary names and renamed into place.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.conversation.reader import read_conversations
from tunelab.core.files import check_output_path, write_text_atomically
from tunelab.data.validate import conversation_texts, fingerprints


@dataclass
class SplitReport:
    train: str
    test: str
    train_examples: int
    test_examples: int
    duplicates_removed: int
    prompt_groups: int

    def to_dict(self) -> dict:
        return asdict(self)


def split_file(path: str | Path, out_dir: str | Path, test_size: float = 0.2, seed: int = 42,
               overwrite: bool = False) -> SplitReport:
    """Write `out_dir/train.jsonl` and `out_dir/test.jsonl`; `test_size` is a fraction (<1) or a count."""
    conversations = read_conversations(path)  # raises DataError listing every format problem
    unique, seen = [], set()
    groups: dict[str, list[dict]] = {}
    for conversation in conversations:
        _whole, near, _prompt, _reply = fingerprints(conversation["messages"])
        if near in seen:
            continue
        seen.add(near)
        unique.append(conversation)
        prompt, _, _ = conversation_texts(conversation["messages"])
        groups.setdefault(" ".join(prompt.lower().split()), []).append(conversation)
    wanted = _test_count(test_size, len(unique))
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    test_examples, train_examples = [], []
    for group in order:  # whole groups, until the held-out side has the wanted number of examples
        (test_examples if len(test_examples) < wanted else train_examples).extend(group)
    if not train_examples or not test_examples:
        raise ValueError(f"{path}: {len(unique)} distinct conversations in {len(groups)} prompt group(s) cannot "
                         f"be split into two non-empty sides at --test-size {test_size}")
    out_dir = Path(out_dir)
    targets = out_dir / "train.jsonl", out_dir / "test.jsonl"
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --force to replace")
    for target in targets:  # the input is never overwritten, with or without --force
        check_output_path(target, overwrite=True, inputs=[Path(path)])
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, examples in zip(targets, (train_examples, test_examples)):
        write_text_atomically(target, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in examples))
    return SplitReport(str(targets[0]), str(targets[1]), len(train_examples), len(test_examples),
                       len(conversations) - len(unique), len(groups))


def _test_count(test_size: float, total: int) -> int:
    if test_size <= 0:
        raise ValueError(f"--test-size {test_size}: must be a fraction between 0 and 1, or a count of examples")
    if test_size < 1:
        return max(1, round(test_size * total))
    if test_size != int(test_size):
        raise ValueError(f"--test-size {test_size}: a count of examples must be a whole number")
    return int(test_size)
