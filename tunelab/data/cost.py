"""What a training file will cost: dollars on OpenAI, time on this machine.

OpenAI bills every token of every example (not just the trained ones), each example cut to the model's
per-example limit, times the number of epochs. With `n_epochs` left on auto, OpenAI picks epochs by the
rule in `tunelab.core.settings.default_n_epochs` (3, adjusted so examples × epochs stays within 100–25,000).
Prices come from `openai_prices.yaml`, a dated table: the date is reported with every estimate.

Local training time is tokens × epochs divided by the training throughput measured for the embedded
default model here, scaled by parameter count for other models. It is a rough guide: the figure below is
from a two-core CPU, and a GPU is one to three orders of magnitude faster.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import yaml

from tunelab.core.settings import default_n_epochs

PRICES_FILE = Path(__file__).with_name("openai_prices.yaml")

# tunelab train on the embedded default (Gemma 3 270M, LoRA r=16 on all linear layers, fp32, batch 8),
# on a two-core x86-64 CPU without AVX-512 or bf16: 29,487 tokens in 229 s over the demo's training set
# (bench/train_speed.py, 2026-11-24), rounded down because these machines vary by ±15% from run to run.
DEFAULT_MODEL_PARAMETERS = 268_098_176
DEFAULT_MODEL_TOKENS_PER_SECOND = 120.0
THROUGHPUT_SOURCE = "tunelab train on Gemma 3 270M, 2-core CPU, fp32 (2026-11-24)"


@dataclass
class OpenAICost:
    model: str
    n_epochs: int
    tokens_per_epoch: int  # every example's tokens, each cut to the per-example limit
    billed_tokens: int
    usd: float
    usd_per_million_tokens: float
    max_tokens_per_example: int
    examples_over_limit: int
    prices_as_of: str
    exact_tokens: bool

    def to_dict(self) -> dict:
        return {"backend": "openai", **asdict(self)}


@dataclass
class LocalEstimate:
    model: str
    n_epochs: int
    tokens_per_epoch: int
    trained_tokens: int  # tokens processed over all epochs
    seconds: float
    tokens_per_second: float
    throughput_source: str

    def to_dict(self) -> dict:
        return {"backend": "local", **asdict(self)}


@cache
def price_table() -> dict:
    return yaml.safe_load(PRICES_FILE.read_text(encoding="utf-8"))


def openai_model(name: str) -> tuple[str, dict]:
    """The priced snapshot for a model name: exact (`gpt-4o-mini-2024-07-18`) or its alias (`gpt-4o-mini`)."""
    models = price_table()["models"]
    if name in models:
        return name, models[name]
    snapshots = [snapshot for snapshot in models if snapshot.rsplit("-", 3)[0] == name or
                 snapshot.rsplit("-", 1)[0] == name]
    if len(snapshots) != 1:
        raise ValueError(f"unknown OpenAI fine-tuning model {name!r}; priced models: {', '.join(models)}")
    return snapshots[0], models[snapshots[0]]


def openai_cost(model: str, example_tokens: list[int], n_epochs: int | None = None, exact: bool = True) -> OpenAICost:
    """OpenAI's bill for training on examples of these token lengths."""
    snapshot, entry = openai_model(model)
    limit = entry["max_tokens_per_example"]
    epochs = n_epochs or default_n_epochs(len(example_tokens))
    per_epoch = sum(min(limit, tokens) for tokens in example_tokens)
    price = entry["usd_per_million_training_tokens"]
    return OpenAICost(
        model=snapshot, n_epochs=epochs, tokens_per_epoch=per_epoch, billed_tokens=per_epoch * epochs,
        usd=round(per_epoch * epochs * price / 1e6, 2), usd_per_million_tokens=price, max_tokens_per_example=limit,
        examples_over_limit=sum(tokens > limit for tokens in example_tokens),
        prices_as_of=str(price_table()["as_of"]), exact_tokens=exact,
    )


def local_estimate(model_name: str, parameters: int | None, example_tokens: list[int], max_tokens: int | None,
                   n_epochs: int | None = None) -> LocalEstimate:
    """Rough training time on this kind of machine, from the default model's measured throughput."""
    epochs = n_epochs or default_n_epochs(len(example_tokens))
    per_epoch = sum(min(max_tokens, tokens) if max_tokens else tokens for tokens in example_tokens)
    # Training compute grows with parameter count; scale the measured rate by it.
    speed = DEFAULT_MODEL_TOKENS_PER_SECOND * DEFAULT_MODEL_PARAMETERS / (parameters or DEFAULT_MODEL_PARAMETERS)
    return LocalEstimate(model=model_name, n_epochs=epochs, tokens_per_epoch=per_epoch,
                         trained_tokens=per_epoch * epochs, seconds=round(per_epoch * epochs / speed, 1),
                         tokens_per_second=round(speed, 1), throughput_source=THROUGHPUT_SOURCE)


def parameter_count(model_dir: str) -> int | None:
    """Parameters of a local model, read from its safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="numpy") as handle:
            for name in handle.keys():
                count = 1
                for size in handle.get_slice(name).get_shape():
                    count *= size
                total += count
    return total


def estimate(counter, example_tokens, limit: int | None, n_epochs: int | None = None) -> dict:
    """The cost of training on these examples with the counter's backend, as a dict for reports."""
    if counter.backend == "openai":
        return openai_cost(counter.model, list(example_tokens), n_epochs, counter.exact).to_dict()
    return local_estimate(counter.model, counter.parameters, list(example_tokens), limit, n_epochs).to_dict()
