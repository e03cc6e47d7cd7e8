"""The prepared GPU check: what a lent GPU must show, in stages under one deadline, always ending in a summary.

    python bench/gpu_check.py [--tiny] [--deadline 540] [--out gpu_check.jsonl]

On a lent GPU machine (bare: PyTorch, transformers, accelerate, no network), with the wheels of
tools/gpu_wheels.sh carried in .wheels/:

    pip install -q --no-index --no-deps .wheels/*.whl && python bench/gpu_check.py --out $OUT/gpu_check.jsonl

Each stage runs in its own timed subprocess (a hung or crashed stage costs only its own time) and prints one
JSON line of figures; the lines go to --out as they come, and a summary table is printed at the end whatever
happened. No download: the models are built here with random weights and a tokenizer trained on the bundled
support conversations.

Stages:
- `versions`: PyTorch, CUDA, the device, transformers, peft, bitsandbytes, liger-kernel; bitsandbytes' 4-bit
  round trip (NF4 quantise and dequantise a random weight) where it is installed on CUDA.
- `numerics`: the fused loss in bf16 against fp64 cross-entropy (random and confident predictions), and the
  fast training paths (merged LoRA, fused norms, fused loss) against PEFT's own model in fp32: loss and
  every gradient.
- `plan-8b`: the memory plan for a Llama-3-8B-shaped model (LoRA and QLoRA) on this device's free memory.
- `train`: `tunelab train` (LoRA, `auto` settings) on a model shaped like Llama-3.2-1B: tokens/s, step time,
  the loss first → last, the plan's peak against the measured peak allocated and reserved memory.
- `hf-trainer`: Hugging Face `Trainer` + PEFT on the same tokens, LoRA, batch and compute format: the
  baseline for `train`'s tokens/s, step time, peak memory and loss first → last.
- `train-checkpointing`, `train-liger`: `train` with gradient checkpointing, and with Liger's kernels.
- `serve`: `tunelab serve` on the device with that model: two jobs through the official SDK to `succeeded`,
  then a plain, a streamed and 8 concurrent chat completions to both `ft:` models at once, and what the
  server holds (one copy of the base).
- `qlora-8b`: `tunelab train --adapter qlora` on a Llama-3-8B-shaped model with random weights (built on the
  GPU): speed, loss and the plan's peak against the measured one.

`--tiny` runs every stage on the CPU with a 2-layer model (the suite runs it: tests/test_gpu_check.py);
what only CUDA can run (Liger, 4 bits) is skipped there, or run with LoRA, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SUPPORT = ROOT / "tunelab" / "examples" / "support" / "train.jsonl"
# In the order they run: what matters most first, the heaviest (an 8B model) last.
STAGES = ["versions", "numerics", "plan-8b", "train", "hf-trainer", "train-checkpointing", "train-liger", "serve",
          "qlora-8b"]
SHAPES = {  # the sizes that matter for speed and memory; the vocabulary of a Llama 3 tokenizer
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False),
}


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def conversations(count: int) -> list[dict]:
    return [json.loads(line) for line in SUPPORT.read_text(encoding="utf-8").splitlines()[:count]]


def build_model(folder: Path, shape: str, weights: bool = True) -> Path:
    """A Llama model of `shape` with random weights (or its config alone), and a byte-level BPE tokenizer
    trained on the support conversations, with Gemma's turn markers and template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tunelab.conversation.templates import GEMMA_CHAT_TEMPLATE

    folder.mkdir(parents=True, exist_ok=True)
    texts = [m["content"] for c in conversations(160) for m in c["messages"]]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    sizes = dict(SHAPES[shape])
    sizes.setdefault("vocab_size", len(tokenizer))
    config = LlamaConfig(**sizes, max_position_embeddings=4096, initializer_range=0.02,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_turn>"))
    if weights:
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.bfloat16 if shape != "tiny" else torch.float32).save_pretrained(folder)
    else:
        config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- stages: each returns its figures ---------------------------------------------------------------------

def stage_versions(work: Path, tiny: bool) -> dict:
    import importlib.metadata as metadata

    import torch

    figures = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device()}
    for package in ("transformers", "peft", "accelerate", "bitsandbytes", "liger-kernel"):
        try:
            figures[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            figures[package] = None
    if device() == "cuda":
        figures.update(name=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())),
                       memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
        if figures["bitsandbytes"]:
            import bitsandbytes.functional as bnb

            weight = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
            packed, state = bnb.quantize_4bit(weight, quant_type="nf4")
            back = bnb.dequantize_4bit(packed, state)
            figures["nf4_relative_error"] = float((back - weight).float().norm() / weight.float().norm())
    return figures


def stage_numerics(work: Path, tiny: bool) -> dict:
    import torch

    from tunelab.core.settings import TrainConfig
    from tunelab.models.resolve import load_model, resolve_model
    from tunelab.train.loss import TrainedTokenLoss, linear_cross_entropy
    from tunelab.train.methods import trainable_model

    where = device()
    figures: dict = {}
    generator = torch.Generator().manual_seed(0)
    # A CPU without bf16 units emulates it: the tiny run takes a smaller head (tests/train/test_loss_numerics.py's).
    vocabulary, width, tokens, confident = (8192, 256, 32, 60.0) if tiny else (32768, 640, 64, 40.0)
    weight = (torch.randn(vocabulary, width, generator=generator) * 0.02).to(torch.bfloat16).to(where)
    targets = torch.randint(0, vocabulary, (tokens,), generator=generator).to(where)
    for name, confidence in (("random", 0.0), ("confident", confident)):
        direction = weight[targets].float() / weight[targets].float().norm(dim=-1, keepdim=True)
        hidden = (direction * confidence + torch.randn(tokens, width, generator=generator).to(where) * 0.5).to(torch.bfloat16)
        fused = hidden.clone().requires_grad_()
        linear_cross_entropy(fused, weight, targets, None, torch.bfloat16)[0].backward()
        exact = hidden.double().requires_grad_()
        torch.nn.functional.cross_entropy(exact @ weight.double().T, targets, reduction="sum").backward()
        figures[f"loss_gradient_error_{name}"] = float((fused.grad.double() - exact.grad).norm() / exact.grad.norm())

    # The fast paths against PEFT's own model, fp32, same weights and batch.
    folder = build_model(work / "numerics-model", "tiny")
    config = TrainConfig(data="x", model=str(folder), dtype="fp32", lora_dropout=0.0)
    fast = trainable_model(resolve_model(str(folder)), config, where)
    torch.manual_seed(1)
    for parameter in fast.parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.02)
    from peft import LoraConfig, get_peft_model

    reference = get_peft_model(load_model(str(folder), dtype=torch.float32).to(where),
                               LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    reference.load_state_dict(fast.state_dict(), strict=False)
    ids = torch.randint(7, 500, (2, 48), generator=generator).to(where)
    labels = ids.clone()
    labels[:, :10] = -100
    total, _correct, count = TrainedTokenLoss(fast)(ids, torch.ones_like(ids), labels)
    (total / count).backward()
    reference(input_ids=ids, labels=labels).loss.backward()
    fast_grads = {n: p.grad for n, p in fast.named_parameters() if p.grad is not None}
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    errors = [float((fast_grads[n] - ref_grads[n]).norm() / ref_grads[n].norm().clamp_min(1e-30)) for n in ref_grads]
    figures.update(fast_path_loss=float(total / count), peft_loss=float(reference(input_ids=ids, labels=labels).loss),
                   fast_path_gradients=len(errors), fast_path_max_gradient_error=max(errors))
    return figures


def stage_plan_8b(work: Path, tiny: bool) -> dict:
    from tunelab.core.settings import TrainConfig
    from tunelab.models.device_memory import device_budget
    from tunelab.train.memory import model_shape, plan_for

    folder = build_model(work / "llama-3-8b-config", "llama-3-8b", weights=False)
    shape = model_shape(folder, "llama-3-8b")
    where = device()
    budget = device_budget(where, "80GB" if where == "cpu" else None)
    plans = {adapter: plan_for(TrainConfig(data="x", model=str(folder), adapter=adapter), shape, "cuda", budget)
             for adapter in ("lora", "qlora")}
    return {adapter: {"fits": made.fits, "peak_gib": round(made.peak / 2**30, 2), "micro_batch": made.micro_batch_size,
                     "checkpointing": made.gradient_checkpointing} for adapter, made in plans.items()}


def _tunelab_run(work: Path, tiny: bool, name: str, model: Path | None = None, examples: int = 64, **settings) -> dict:
    """`tunelab train` (LoRA unless `settings` say otherwise) on the stage's model: speed, loss and memory."""
    import csv

    import torch

    from tunelab.core.settings import TrainConfig
    from tunelab.runs.rundir import RunDir
    from tunelab.train.local import train

    data = work / f"{name}.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in conversations(examples)))
    # As the hf-trainer stage: batch 8, lr 1e-3 (2e-4 × 5) with 10% warmup, one epoch.
    run = train(TrainConfig(data=str(data), model=str(model or work / "model"), out=str(work / name), n_epochs=1,
                            batch_size=8, learning_rate_multiplier=5, **settings))
    events = list(RunDir(run).events())
    timing = next(e["data"] for e in events if "train_seconds" in (e.get("data") or {}))
    planned = next(e["data"]["memory_plan"] for e in events if "memory_plan" in (e.get("data") or {}))
    losses = [float(row["train_loss"]) for row in csv.DictReader((run / "metrics.csv").open())]
    settings_used = RunDir(run).settings()
    figures = {"shape": "tiny" if tiny else "llama-3.2-1b", "adapter": settings_used["adapter"],
               "kernels": settings_used["kernels"], "checkpointing": settings_used["gradient_checkpointing"],
               "tokens": timing["tokens"], "tokens_per_s": round(timing["tokens"] / timing["train_seconds"], 1),
               "step_s": round(timing["train_seconds"] / len(losses), 3), "loss_first": losses[0],
               "loss_last": losses[-1], "plan_peak_gib": round(planned["peak_bytes"] / 2**30, 2),
               "micro_batch": planned["micro_batch_size"]}
    if torch.cuda.is_available():
        figures.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                       peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2))
    return figures


def stage_train(work: Path, tiny: bool) -> dict:
    return _tunelab_run(work, tiny, "train")


def stage_train_checkpointing(work: Path, tiny: bool) -> dict:
    return _tunelab_run(work, tiny, "train-checkpointing", gradient_checkpointing=True)


def stage_train_liger(work: Path, tiny: bool) -> dict:
    import importlib.util

    if device() != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return {"status": "skipped: Liger's kernels need CUDA and liger-kernel"}
    return _tunelab_run(work, tiny, "train-liger", kernels="liger")


def stage_hf_trainer(work: Path, tiny: bool) -> dict:
    """Hugging Face `Trainer` + PEFT on the tokens `tunelab train` trains on: the same model, data, LoRA, batch,
    learning rate and compute format, as a user of those libraries would run it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from tunelab.conversation.render import render_conversation
    from tunelab.models.precision import resolve_dtype
    from tunelab.models.resolve import load_model, load_tokenizer

    folder = work / "model"
    tokenizer = load_tokenizer(str(folder))
    rendered = [render_conversation(tokenizer, c["messages"], max_length=1024) for c in conversations(64)]
    dataset = [{"input_ids": r.input_ids, "labels": r.labels} for r in rendered]
    dtype = resolve_dtype("auto", device())
    model = get_peft_model(load_model(str(folder), dtype=dtype).to(device()),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    arguments = TrainingArguments(output_dir=str(work / "hf-trainer"), per_device_train_batch_size=8,
                                  num_train_epochs=1, learning_rate=1e-3, warmup_steps=0.1, logging_steps=1,
                                  save_strategy="no", report_to=[], bf16=dtype == torch.bfloat16,
                                  fp16=dtype == torch.float16, use_cpu=device() == "cpu", seed=42,
                                  dataloader_num_workers=0, remove_unused_columns=False)
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset, callbacks=[Losses()],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    tokens = sum(len(r.input_ids) for r in rendered)
    figures = {"shape": "tiny" if tiny else "llama-3.2-1b", "dtype": str(dtype).removeprefix("torch."),
               "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1), "step_s": round(seconds / len(losses), 3),
               "loss_first": losses[0], "loss_last": losses[-1]}
    if torch.cuda.is_available():
        figures.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                       peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2))
    return figures


def stage_qlora_8b(work: Path, tiny: bool) -> dict:
    """QLoRA on a Llama-3-8B-shaped model with random weights: built on the GPU (no 16 GB of random numbers
    drawn on the CPU), saved, then trained by `tunelab train --adapter qlora` as a user's 8B would be. Where
    QLoRA cannot run (no CUDA or no bitsandbytes: `--tiny`), the same path with LoRA on the tiny model."""
    import importlib.util

    import torch

    qlora = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    if not qlora:
        return _tunelab_run(work, tiny, "qlora-8b", adapter="lora") | {"note": "LoRA on the tiny model: no CUDA with bitsandbytes"}
    from transformers import AutoConfig, LlamaForCausalLM

    folder = build_model(work / "llama-3-8b", "llama-3-8b", weights=False)
    config = AutoConfig.from_pretrained(folder)
    started = time.monotonic()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in 16 bits: 16 GB, not 32 GB and a copy
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder, max_shard_size="4GB")
    built = time.monotonic() - started
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return {"build_s": round(built, 1)} | _tunelab_run(work, tiny, "qlora-8b-run", model=folder, examples=32,
                                                        adapter="qlora", max_length=512)


def stage_serve(work: Path, tiny: bool) -> dict:
    import socket
    import threading

    import openai

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "sk-gpu-check"
    server = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", "--port", str(port), "--data-dir",
                               str(work / "serve"), "--api-key", key, "--alias", f"gpt-4o-mini-2024-07-18={work / 'model'}",
                               "--max-jobs", "2"],  # the two jobs side by side
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=5)
        started = time.monotonic()
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if server.poll() is not None or time.monotonic() - started > 120:
                    raise RuntimeError(f"the server did not start: {server.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        data = work / "serve-train.jsonl"
        data.write_text("".join(json.dumps(c) + "\n" for c in conversations(16)))
        uploaded = client.files.create(file=data.open("rb"), purpose="fine-tune")
        jobs = [client.fine_tuning.jobs.create(training_file=uploaded.id, model="gpt-4o-mini-2024-07-18", seed=seed,
                                               hyperparameters={"n_epochs": 1}) for seed in (1, 2)]
        for k, job in enumerate(jobs):
            while job.status not in ("succeeded", "failed", "cancelled"):
                time.sleep(1)
                job = jobs[k] = client.fine_tuning.jobs.retrieve(job.id)
            if job.status != "succeeded":
                raise RuntimeError(f"job {job.id} {job.status}: {job.error.message if job.error else 'no error given'}")
        job, other = jobs
        figures = {"jobs": [j.status for j in jobs], "jobs_seconds": round(time.monotonic() - started, 1),
                   "fine_tuned_model": job.fine_tuned_model}
        question = [{"role": "user", "content": "Where is my order?"}]
        plain = client.chat.completions.create(model=job.fine_tuned_model, messages=question, max_tokens=32)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model=job.fine_tuned_model, messages=question, max_tokens=32, stream=True) if chunk.choices)
        answers: list = [None] * 8
        begun = time.monotonic()

        def ask(index: int) -> None:  # the two fine-tunes, four requests each, in the same batches
            answers[index] = client.chat.completions.create(model=jobs[index % 2].fine_tuned_model, messages=question,
                                                            max_tokens=32).usage.completion_tokens

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        figures.update(plain_tokens=plain.usage.completion_tokens, streamed_chars=len(streamed),
                       concurrent_answers=sum(a is not None for a in answers),
                       concurrent_tokens_per_s=round(sum(a or 0 for a in answers) / (time.monotonic() - begun), 1))
        import httpx2 as httpx  # the HTTP client the openai package is built on

        serving = httpx.get(f"http://127.0.0.1:{port}/v1/tunelab/serving", headers={"Authorization": f"Bearer {key}"},
                            timeout=30).json()["models"]
        figures.update(models_loaded=len(serving), fine_tunes_attached=sum(len(m["fine_tunes_attached"]) for m in serving),
                       mixed_steps=sum(m["steps_with_several_adapters"] for m in serving),
                       kv_cache_tokens={m["model"][-40:]: m["caches"] for m in serving})
        return figures
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_stages(names: list[str], work: Path, tiny: bool) -> None:
    """In the stages' own process: each stage's figures as a line of stdout, or what stopped it."""
    import traceback

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    for name in names:
        started = time.monotonic()
        try:
            figures = globals()["stage_" + name.replace("-", "_")](work, tiny)
        except Exception:  # noqa: BLE001 - a stage's failure is its result; the next stage still runs
            figures = {"status": "failed", "stderr": traceback.format_exc()[-3000:]}
        print(json.dumps({"stage": name, "status": "ok", "seconds": round(time.monotonic() - started, 1), **figures}),
              flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="every stage on the CPU with a 2-layer model")
    parser.add_argument("--deadline", type=float, default=540, help="seconds for all stages together (default 540)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.jsonl"))
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # stages to run in this process, comma-separated
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.stage:
        run_stages(options.stage.split(","), options.work, options.tiny)
        return 0

    # tunelab from this checkout, installed or not (on the lent machine it is not: no network to build it), in
    # every process the stages start (a server, its workers).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    deadline = time.monotonic() + options.deadline
    results = []
    with tempfile.TemporaryDirectory() as scratch, options.out.open("w") as out:
        work = Path(scratch)
        if "CUDA_VISIBLE_DEVICES" not in os.environ and options.tiny:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        build_model(work / "model", "tiny" if options.tiny else "llama-3.2-1b")
        # On a GPU each stage has a process of its own (a crash or a hang costs only that stage); on a CPU
        # (--tiny, which the suite runs) one process runs them all, paying for PyTorch's import once.
        for group in ([STAGES] if options.tiny else [[name] for name in STAGES]):
            for result in _run_group(group, work, options.tiny, deadline - time.monotonic()):
                results.append(result)
                out.write(json.dumps(result) + "\n")
                out.flush()
    print(f"\nGPU check summary ({'tiny, CPU' if options.tiny else 'full'}):")
    for result in results:
        figures = {k: v for k, v in result.items() if k not in ("stage", "status", "stderr")}
        print(f"  {result['stage']:<19s} {result['status']:<10s} {json.dumps(figures)[:400]}")
        if "stderr" in result:
            print("    " + result["stderr"].strip().splitlines()[-1][:300] if result["stderr"].strip() else "")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results) else 1


def _run_group(names: list[str], work: Path, tiny: bool, left: float) -> list[dict]:
    """Run stages `names` in one subprocess within `left` seconds; a result per stage, whatever happens."""
    if left < 5:
        return [{"stage": name, "status": "not run: the deadline passed"} for name in names]
    command = [sys.executable, __file__, "--stage", ",".join(names), "--work", str(work)] + (["--tiny"] if tiny else [])
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=left, cwd=ROOT)
        stdout, stderr, ending = finished.stdout, finished.stderr, f"failed (exit {finished.returncode})"
    except subprocess.TimeoutExpired as expired:
        stdout, stderr, ending = expired.stdout or "", expired.stderr or "", f"timed out after {left:.0f} s"
        stdout, stderr = (text.decode() if isinstance(text, bytes) else text for text in (stdout, stderr))
    done = {}
    for line in stdout.splitlines():
        if line.startswith('{"stage": '):
            result = json.loads(line)
            done[result["stage"]] = result
    return [done.get(name) or {"stage": name, "status": ending, "stderr": stderr[-3000:]} for name in names]


if __name__ == "__main__":
    sys.exit(main())
