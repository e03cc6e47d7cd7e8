"""The systems an evaluation compares, and their replies to the held-out prompts, cached in the output folder.

- `base`: the base model, zero-shot;
- `base_fewshot`: the base model with K training examples before each prompt ("try prompts first");
- `fine_tuned`: the run (base + adapter, or a full fine-tune) or the model given with `--model`;
- any model behind an OpenAI-compatible endpoint (`--compare MODEL@URL`; without `@URL`, OpenAI itself):
  an OpenAI fine-tune while it still answers, or a model on a `tunelab serve`.

Local systems generate in length-sorted batches, finished rows leaving the batch (models/generate.py):
the same prompts always form the same batches, so a reply is reproducible to the bit, greedy or sampled
with a seed, which continuous batching cannot promise (its batches depend on thread timing). Greedy by
default; `Decoding` sets a temperature, top_p and seed. Endpoints get the same temperature, top_p and
seed, several requests at a time.

Replies are cached in `<out>/generations/<system>.jsonl`, keyed by everything that decides them (model
fingerprint and number format, messages, tools, token limit, decoding), so re-scoring or adding a scorer
costs no generation.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.files import write_text_atomically
from tunelab.eval.items import Item, with_shots
from tunelab.models.endpoint import ENDPOINT_CONCURRENCY, Decoding, Endpoint
from tunelab.models.generate import Generation, LoadedModel, generate_replies
from tunelab.models.precision import dtype_name

BASE, BASE_FEWSHOT, FINE_TUNED = "base", "base_fewshot", "fine_tuned"


@dataclass
class System:
    """One way of answering the held-out prompts."""

    name: str
    model: str  # the model's name as the report shows it
    fingerprint: str  # changes whenever the weights or the way of prompting change
    loaded: LoadedModel | None = None
    use_adapter: bool = False
    shots: list[dict] = field(default_factory=list)
    endpoint: "Endpoint | None" = None

    def prompt(self, item: Item) -> list[dict]:
        return with_shots(item.prompt, self.shots) if self.shots else item.prompt

    def describe(self) -> dict:
        return {"model": self.model, "kind": "endpoint" if self.endpoint else "local",
                **({"url": self.endpoint.url} if self.endpoint else {}),
                **({"shots": len(self.shots) // 2} if self.shots else {}),
                **({"dtype": dtype_name(next(self.loaded.model.parameters()).dtype)} if self.loaded else {})}


def generate_for(system: System, items: list[Item], max_new_tokens: int, cache_dir: Path,
                 events: Events = NO_EVENTS, decoding: Decoding = Decoding()) -> list[Generation]:
    """The system's reply to every item, from the cache where it has them."""
    cache_file = cache_dir / f"{_safe(system.name)}.jsonl"
    cached = _read_cache(cache_file)
    keys = [_key(system, item, max_new_tokens, decoding) for item in items]
    missing = [index for index, key in enumerate(keys) if key not in cached]
    if missing:
        started = time.monotonic()
        with events.progress(f"generate-{system.name}", total=len(missing), description=f"generate ({system.name})") as bar:
            if system.endpoint:
                made = _endpoint_replies(system, [items[i] for i in missing], max_new_tokens, decoding, bar.advance)
            else:
                made = generate_replies(system.loaded, [system.prompt(items[i]) for i in missing],
                                        max_new_tokens=max_new_tokens, use_adapter=system.use_adapter,
                                        on_batch=bar.advance, tools=[items[i].tools for i in missing],
                                        temperature=decoding.temperature, top_p=decoding.top_p, seed=decoding.seed)
        cached.update({keys[i]: generation for i, generation in zip(missing, made)})
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(cache_file, "".join(json.dumps({"key": k, "generation": asdict(g)}) + "\n"
                                                  for k, g in cached.items()))
        events.message(f"{system.name}: generated {len(missing)} replies in {time.monotonic() - started:.0f} s "
                       f"({len(items) - len(missing)} from the cache)", seconds=round(time.monotonic() - started, 1))
    else:
        events.message(f"{system.name}: all {len(items)} replies from the cache")
    return [cached[key] for key in keys]


def _endpoint_replies(system: System, items: list[Item], max_new_tokens: int, decoding: Decoding,
                      advance) -> list[Generation]:
    def ask(item: Item) -> Generation:
        reply = system.endpoint.reply(system.prompt(item), item.tools, max_new_tokens, decoding)
        advance()
        return reply

    with ThreadPoolExecutor(ENDPOINT_CONCURRENCY) as pool:
        return list(pool.map(ask, items))


def _key(system: System, item: Item, max_new_tokens: int, decoding: Decoding) -> str:
    decided_by = [system.fingerprint, system.prompt(item), item.tools, max_new_tokens] + \
        ([] if decoding == Decoding() else [asdict(decoding)])  # greedy keys stay as they were
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True, default=str).encode()).hexdigest()


def _read_cache(path: Path) -> dict[str, Generation]:
    if not path.is_file():
        return {}
    cached = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            cached[record["key"]] = Generation(**record["generation"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a damaged cache line only means that reply is generated again
    return cached


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]


def weights_fingerprint(path: str | Path) -> str:
    """Names, sizes and modification times of the weight files under `path` (cheap, and changes when they do)."""
    path = Path(path)
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path] if path.exists() else []
    return hashlib.sha256(json.dumps([[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]).encode()).hexdigest()[:16]
