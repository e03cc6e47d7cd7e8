"""Shared fixtures: a tiny model built inside the tests (2 layers, small vocabulary) — never downloaded."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest

from tunelab.core.process import FULL_COLLECTION_EVERY

# Under pytest-xdist each worker (and each process it starts) computes on one thread: workers side by side
# with PyTorch's default of a thread per core oversubscribe the cores, and OpenMP's spinning threads then
# wait on each other far longer than the work takes. Set before anything imports torch, which reads it once.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
# The tests' own processes hold PyTorch, transformers and every test module: collected fully as seldom as
# tunelab's processes are (core/process.py).
gc.set_threshold(*gc.get_threshold()[:2], FULL_COLLECTION_EVERY)


def pytest_collection_modifyitems(items):
    """The longest tests first, longest of all first (`heavy(seconds=…)`, measured held to AVX2): with workers
    side by side, a long test started last would run on alone at the end."""
    def expected_seconds(item) -> float:
        heavy = item.get_closest_marker("heavy")
        return heavy.kwargs.get("seconds", 30) if heavy else 0

    items.sort(key=expected_seconds, reverse=True)


SYSTEM = "You are the customer support assistant for Brightlane Home, an online home goods store."
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
EXAMPLES = Path(__file__).resolve().parent.parent / "tunelab" / "examples" / "support"


def build_tiny_model(directory: Path, corpus: list[str], initializer_range: float = 0.3, head_dim: int = 32,
                     architecture: str = "gemma3") -> Path:
    """A 2-layer Gemma 3 model (or `architecture` "llama" or "qwen2", for the GGUF writer's other layouts)
    with a byte-level BPE tokenizer trained on `corpus`, saved as a HF directory.

    initializer_range is large so the tied (frozen) embeddings let logits move: at the usual 0.02 a LoRA
    on a random 64-wide model cannot push any logit past ~1.3 and the loss barely moves. At 0.3, though, an
    untrained model's greedy reply depends on little but the last token; tests of generation itself build
    one at 0.02, whose every next token depends on the whole context.

    head_dim 256 (Gemma 3's own) makes a model whose attention scale GGUF can carry: llama.cpp scales
    queries by 1/sqrt(head_dim), Gemma by 1/sqrt(query_pre_attn_scalar), which is 256 by default.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    from tunelab.conversation.templates import GEMMA_CHAT_TEMPLATE

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim, max_position_embeddings=1024,
        sliding_window=64, initializer_range=initializer_range, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    if architecture != "gemma3":
        from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

        config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                     "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[architecture]
        config = config_class(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
            initializer_range=initializer_range, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = (Gemma3ForCausalLM if architecture == "gemma3" else model_class)(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def train_tiny_run(folder: Path, conversations: list[dict], architecture: str = "gemma3", **settings) -> Path:
    """A finished run of a tiny model with Gemma 3's head size (256: an attention scale GGUF can carry) and
    small initial weights (each greedy token depends on the whole context), on the first 24 conversations."""
    from tunelab.core.settings import TrainConfig
    from tunelab.train.local import train

    corpus = [m["content"] for c in conversations for m in c["messages"]]
    model = build_tiny_model(folder / "model", corpus, initializer_range=0.02, head_dim=256, architecture=architecture)
    (folder / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations[:24]))
    return train(TrainConfig(data=str(folder / "train.jsonl"), model=str(model), out=str(folder / "run"),
                             batch_size=4, dtype="fp32", **settings))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def support_conversations() -> list[dict]:
    return read_jsonl(EXAMPLES / "train.jsonl")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, support_conversations) -> Path:
    corpus = [m["content"] for c in support_conversations for m in c["messages"]]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), corpus)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from tunelab.models.resolve import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture()
def write_jsonl(tmp_path):
    def write(name: str, conversations: list[dict]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(c) + "\n" for c in conversations), encoding="utf-8")
        return path

    return write


def run_cli(*arguments: str, input: str | None = None, cwd: Path | None = None, env: dict | None = None,
            text: bool = False):
    """`tunelab ARGUMENTS` called in-process through the real entry point's app (typer's CliRunner), returned
    like a finished subprocess (`returncode`, `stdout` and `stderr` as bytes, or as str with `text`), run in
    `cwd` and with the environment variables `env` if given. An exception nobody foresaw is the entry point's
    exit code 3, as in a real process."""
    import subprocess

    from typer.testing import CliRunner

    from tunelab.cli.app import app

    before = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner(env=env).invoke(app, list(arguments), input=input, terminal_width=400)
    finally:
        os.chdir(before)
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        code = 3
    if text:
        return subprocess.CompletedProcess(list(arguments), code, result.stdout, result.stderr)
    return subprocess.CompletedProcess(list(arguments), code, result.stdout_bytes, result.stderr_bytes)
