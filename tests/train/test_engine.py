"""The training engine on a tiny model: accumulation, pinned loss, exact resume, checkpoints, methods,
early stopping, two processes under accelerate, and the template agreement check.

Runs are fp32 unless a test says otherwise, so they mean the same on every CPU. The numeric checks are
parametrised over the compute formats and force each one: bf16 runs on any x86 CPU (emulated, slowly,
where it has no bf16 units), so every machine proves both paths (tests/train/test_cpu_variants.py also
reruns the bf16 ones with the CPU's bf16 units switched off).
"""

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import run_cli
from tunelab.conversation.render import TemplateMismatch, check_template_agreement
from tunelab.core.settings import TrainConfig
from tunelab.runs.rundir import RunDir
from tunelab.train.checkpoints import latest_checkpoint
from tunelab.train.loss import linear_cross_entropy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, support_conversations):
    directory = tmp_path_factory.mktemp("engine-data")
    train_file, valid_file = directory / "train.jsonl", directory / "valid.jsonl"
    train_file.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:16]))
    valid_file.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[16:24]))
    return train_file, valid_file


DTYPES = ["fp32", "bf16"]


def settings(data_files, model_dir, out, **changes) -> TrainConfig:
    base = dict(data=str(data_files[0]), model=str(model_dir), out=str(out), n_epochs=3, batch_size=4,
                learning_rate_multiplier=25, seed=3, dtype="fp32")
    return TrainConfig(**dict(base, **changes))


def run(config: TrainConfig, **options) -> Path:
    from tunelab.train.local import train

    return train(config, **options)


def metric_rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


COMPUTE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """‖value − reference‖ / ‖reference‖, in fp32: one number for a whole tensor of 16-bit roundings."""
    value, reference = value.float(), reference.float()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


# (compute format, head): a frozen head takes the CPU pass over vocabulary blocks, a trained one the token
# chunks; an fp32 head multiplied in 16 bits is full fine-tuning's master weight under autocast.
LOSS_CASES = [(dtype, head) for dtype in COMPUTE for head in ("frozen", "trained", "fp32 master")
              if not (dtype == "fp32" and head == "fp32 master")]


@pytest.mark.parametrize(("dtype", "head"), LOSS_CASES)
def test_fused_loss_equals_plain_cross_entropy_in_value_and_gradient(monkeypatch, dtype, head):
    import tunelab.train.loss as loss_module

    monkeypatch.setattr(loss_module, "CHUNK_BYTES", 4 * 50 * 7)  # 7 tokens per chunk: several chunks
    monkeypatch.setattr(loss_module, "CACHE_BLOCK_BYTES", 4 * 30 * 7)  # and several vocabulary blocks
    compute = COMPUTE[dtype]
    # fp32 agrees to rounding order; 16-bit formats round logits and products to 8 or 11 bits.
    tolerance = 1e-5 if dtype == "fp32" else 5e-3
    torch.manual_seed(0)
    for scale, softcap in [(1.0, None), (40.0, None), (1.0, 3.0)]:  # 40: logits past the no-shift range
        hidden = (torch.randn(30, 8) * scale).to(compute).requires_grad_()
        weight = torch.randn(500, 8).to(torch.float32 if head == "fp32 master" else compute)
        weight.requires_grad_(head != "frozen")
        targets = torch.randint(0, 500, (30,))
        targets[::2] = (hidden.float() @ weight.float().T).argmax(-1)[::2]  # half of them predicted right
        loss, correct = linear_cross_entropy(hidden, weight, targets, softcap, compute)
        (loss * 0.5).backward()
        hidden_ref, weight_ref = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
        logits = (hidden_ref @ weight_ref.to(compute).T).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        reference = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        (reference * 0.5).backward()
        assert loss.dtype == torch.float32 and torch.allclose(loss, reference, rtol=tolerance / 10)
        assert abs(int(correct) - int((logits.argmax(-1) == targets).sum())) <= (0 if dtype == "fp32" else 1)
        assert int(correct) >= 14
        assert hidden.grad.dtype == compute and relative_error(hidden.grad, hidden_ref.grad) < tolerance
        if head != "frozen":
            assert weight.grad.dtype == weight.dtype and relative_error(weight.grad, weight_ref.grad) < tolerance


def loss_and_gradients(model, tokenizer, dtype: str = "fp32"):
    """Loss and every gradient of `model` on a fixed two-row batch (one row with a masked prompt)."""
    from tunelab.train.loss import TrainedTokenLoss

    ids = torch.tensor([tokenizer.encode("the order arrived late and the box was damaged")] * 2)
    labels = ids.clone()
    labels[0, :4] = -100
    with torch.autocast("cpu", dtype=COMPUTE[dtype], enabled=dtype != "fp32"):
        total, _, _ = TrainedTokenLoss(model)(ids, torch.ones_like(ids), labels)
    total.backward()
    gradients = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return total.detach(), gradients


@pytest.mark.parametrize("dtype", DTYPES + ["fp16"])
def test_fast_lora_layers_train_exactly_like_peft(tiny_model_dir, tiny_tokenizer, dtype):
    """fp32: the merged weight; 16-bit: the low-rank product accumulated into the base product."""
    from tunelab.models.resolve import resolve_model
    from tunelab.train.methods import trainable_model

    model = trainable_model(resolve_model(str(tiny_model_dir)), TrainConfig(data="x", lora_dropout=0.0, dtype=dtype),
                            "cpu")
    layers = [m for m in model.modules() if "forward" in m.__dict__ and hasattr(m, "lora_A")]
    assert len(layers) == 2 * 7  # every projection of both layers takes the fast path
    assert {layer.base_layer.weight.dtype for layer in layers} == {COMPUTE[dtype]}  # a frozen base in 16 bits
    assert {layer.lora_A["default"].weight.dtype for layer in layers} == {torch.float32}  # fp32 adapters
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero, which would hide a wrong B gradient or merge
            parameter.data.normal_(0, 0.02)

    fast_loss, fast_gradients = loss_and_gradients(model, tiny_tokenizer, dtype)
    for layer in layers:
        del layer.forward  # back to PEFT's own forward
    peft_loss, peft_gradients = loss_and_gradients(model, tiny_tokenizer, dtype)
    # fp32: rounding order only. 16-bit: both multiply in 16 bits, but round at different points.
    tolerance = 1e-5 if dtype == "fp32" else 2e-2
    assert torch.allclose(fast_loss, peft_loss, rtol=tolerance / 10)
    assert fast_gradients.keys() == peft_gradients.keys() and len(peft_gradients) == 2 * 7 * 2
    for name, gradient in peft_gradients.items():
        assert gradient.abs().max() > 0, name
        assert fast_gradients[name].dtype == torch.float32, name
        assert relative_error(fast_gradients[name], gradient) < tolerance, name

    dropout_model = trainable_model(resolve_model(str(tiny_model_dir)), TrainConfig(data="x", lora_dropout=0.1), "cpu")
    assert not any("forward" in m.__dict__ for m in dropout_model.modules() if hasattr(m, "lora_A"))


@pytest.mark.parametrize("dtype", DTYPES + ["fp16"])
def test_fused_rms_norms_train_exactly_like_the_model_s_own(tiny_model_dir, tiny_tokenizer, dtype):
    from tunelab.models.resolve import resolve_model
    from tunelab.train.methods import trainable_model

    # Full fine-tuning, so that the norms' own weights need gradients too; under 16-bit autocast the norms
    # see 16-bit activations, as in LoRA training over a 16-bit base.
    model = trainable_model(resolve_model(str(tiny_model_dir)), TrainConfig(data="x", adapter="full", dtype=dtype),
                            "cpu")
    norms = [m for m in model.modules() if "forward" in m.__dict__ and type(m).__name__.endswith("RMSNorm")]
    assert len(norms) == 2 * 6 + 1  # four per layer, the query and key norms, and the final norm
    torch.manual_seed(0)
    for norm in norms:  # Gemma starts them at zero (scale 1 + 0), which would hide a wrong weight gradient
        norm.weight.data.normal_(0, 0.3)

    fused_loss, fused_gradients = loss_and_gradients(model, tiny_tokenizer, dtype)
    for norm in norms:
        del norm.forward  # back to the model's own forward
    own_loss, own_gradients = loss_and_gradients(model, tiny_tokenizer, dtype)
    # fp32: rounding order only, far below the gradient's own scale. 16-bit: both compute the norm in fp32
    # and round its output once (measured: bf16 within 1e-7; fp16 within 1.2e-3, its small gradients are
    # subnormal without loss scaling and round with the order of the sums).
    tolerance = 1e-5 if dtype == "fp32" else 5e-3
    assert torch.allclose(fused_loss, own_loss, rtol=tolerance)
    assert fused_gradients.keys() == own_gradients.keys()
    assert sum("norm" in name for name in own_gradients) == len(norms)
    for name, gradient in own_gradients.items():
        assert gradient.abs().max() > 0, name
        if dtype == "fp32":
            assert (fused_gradients[name] - gradient).abs().max() <= tolerance * gradient.abs().max(), name
        else:
            assert relative_error(fused_gradients[name], gradient) < tolerance, name


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_by_eight_accumulation_equals_eight_by_one(tmp_path, data_files, tiny_model_dir, dtype):
    whole = run(settings(data_files, tiny_model_dir, tmp_path / "whole", batch_size=8, n_epochs=2, dtype=dtype))
    accumulated = run(settings(data_files, tiny_model_dir, tmp_path / "accumulated", batch_size=8,
                               micro_batch_size=1, n_epochs=2, dtype=dtype))
    # fp32: summation order only. bf16: a batch padded to its longest example multiplies matrices of other
    # shapes than one example alone, and 16-bit results round differently with the shape.
    loss_tolerance = 1e-5 if dtype == "fp32" else 2e-3
    for a, b in zip(metric_rows(whole), metric_rows(accumulated), strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=loss_tolerance)
    # Weights are compared in units of one step (lr 5e-3): Adam's first steps move each weight by ±lr
    # whatever the gradient's size, so a near-zero gradient that rounds to the other sign moves its weight
    # the other way. A few such weights are expected; most must agree to a small part of a step. (Measured:
    # fp32 a mean of 0.0007% of a step, bf16 0.4%; accumulation that lost a micro-batch moves most weights.)
    step = 25 * 2e-4
    accumulated_weights = adapter(accumulated)
    differences = torch.cat([(tensor - accumulated_weights[name]).abs().flatten()
                             for name, tensor in adapter(whole).items()]) / step
    mean_limit, close, share = (0.01, 0.01, 0.999) if dtype == "fp32" else (0.02, 0.05, 0.98)
    assert float(differences.mean()) < mean_limit
    assert float((differences < close).float().mean()) > share
    job = json.loads((accumulated / "job.json").read_text())
    assert job["hyperparameters"]["batch_size"] == 8  # OpenAI's meaning: examples per step


# The first and last training loss of a fixed run, per compute format. bf16 values hold on CPUs with and
# without bf16 units (test_cpu_variants.py checks the latter on any machine).
PINNED_LOSSES = {"fp32": (14.7159, 12.6328), "bf16": (14.7175, 12.6350)}
PINNED_TOLERANCE = {"fp32": 2e-3, "bf16": 1e-2}


@pytest.mark.parametrize("dtype", DTYPES)
def test_pinned_loss_on_the_tiny_model(tmp_path, data_files, tiny_model_dir, dtype):
    """The loss of a fixed run, pinned: any change to rendering, masking, loss or optimizer moves it."""
    run_dir = run(settings(data_files, tiny_model_dir, tmp_path / "run", dtype=dtype))
    losses = [float(r["train_loss"]) for r in metric_rows(run_dir)]
    assert len(losses) == 12
    first, last = PINNED_LOSSES[dtype]
    assert losses[0] == pytest.approx(first, abs=PINNED_TOLERANCE[dtype])
    assert losses[-1] == pytest.approx(last, abs=PINNED_TOLERANCE[dtype])
    assert losses[-1] < losses[0] * 0.95  # a short real training run: the loss comes down
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["dtype"] == dtype  # recorded with the run


@pytest.mark.parametrize("dtype", DTYPES)
def test_resume_after_cancel_equals_uninterrupted(tmp_path, data_files, tiny_model_dir, dtype):
    uninterrupted = run(settings(data_files, tiny_model_dir, tmp_path / "uninterrupted",
                                 validation=str(data_files[1]), dtype=dtype))
    config = settings(data_files, tiny_model_dir, tmp_path / "resumed", validation=str(data_files[1]), dtype=dtype)
    stopped = run(config, should_stop=lambda step: step == 6)  # 4 steps per epoch: mid-epoch 2
    assert json.loads((stopped / "job.json").read_text())["status"] == "paused"  # resumable, not cancelled
    assert latest_checkpoint(RunDir(stopped).checkpoints_dir).step == 4  # the end of epoch 1
    resumed = run(config, resume=True)
    job = json.loads((resumed / "job.json").read_text())
    assert job["status"] == "succeeded"
    assert (resumed / "metrics.csv").read_text() == (uninterrupted / "metrics.csv").read_text()
    expected = adapter(uninterrupted)
    for name, tensor in adapter(resumed).items():
        assert torch.equal(tensor, expected[name]), name
    messages = [e["message"] for e in map(json.loads, (resumed / "events.jsonl").read_text().splitlines())]
    assert "Resumed from checkpoint at step 4" in messages


def test_fp16_trains_with_loss_scaling_and_resumes_the_scale(tmp_path, data_files, tiny_model_dir):
    uninterrupted = run(settings(data_files, tiny_model_dir, tmp_path / "uninterrupted", dtype="fp16"))
    losses = [float(r["train_loss"]) for r in metric_rows(uninterrupted)]
    assert losses[-1] < losses[0] * 0.95
    config = settings(data_files, tiny_model_dir, tmp_path / "resumed", dtype="fp16")
    run(config, should_stop=lambda step: step == 6)
    scale = latest_checkpoint(RunDir(config.out).checkpoints_dir).state["loss_scale"]
    assert scale["scale"] >= 1.0  # the scaler's state is part of the checkpoint
    resumed = run(config, resume=True)
    assert (resumed / "metrics.csv").read_text() == (uninterrupted / "metrics.csv").read_text()


def test_resume_refuses_changed_settings_and_half_written_checkpoints_are_ignored(tmp_path, data_files,
                                                                                   tiny_model_dir):
    run_dir = run(settings(data_files, tiny_model_dir, tmp_path / "run", n_epochs=1))
    newest = latest_checkpoint(RunDir(run_dir).checkpoints_dir)
    half_written = run_dir / "checkpoints" / ".step-000099.tmp-1234"
    half_written.mkdir()
    (half_written / "trainable.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(RunDir(run_dir).checkpoints_dir).step == newest.step
    assert not half_written.exists()  # cleaned away
    changed = run_cli("train", "--resume", str(run_dir), "--n-epochs", "5")
    assert changed.returncode == 1 and b"--n-epochs" in changed.stderr
    again = run_cli("train", "--data", str(data_files[0]), "--model", str(tiny_model_dir), "--out", str(run_dir))
    assert again.returncode == 1 and b"--resume" in again.stderr


@pytest.mark.parametrize("dtype", DTYPES)
def test_dora_and_full_fine_tuning_train_save_and_generate(tmp_path, data_files, tiny_model_dir, dtype):
    """DoRA (PEFT's own layers) and full fine-tuning (fp32 master weights under 16-bit autocast), each then
    loaded for generation (bf16 on a CPU with bf16 units unless trained in fp32, else fp32), and in both
    formats by request on any CPU."""
    from tunelab.models.generate import generate_replies, load_for_generation
    from tunelab.models.precision import inference_dtype

    dora = run(settings(data_files, tiny_model_dir, tmp_path / "dora", adapter="dora", dtype=dtype))
    assert json.loads((dora / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    assert any("lora_magnitude_vector" in name for name in adapter(dora))
    full = run(settings(data_files, tiny_model_dir, tmp_path / "full", adapter="full", learning_rate_multiplier=50,
                        dtype=dtype))
    assert (full / "model" / "model.safetensors").is_file() and not (full / "adapter").exists()
    assert {t.dtype for t in load_file(full / "model" / "model.safetensors").values()} == {torch.float32}  # master
    for run_dir in (dora, full):
        losses = [float(r["train_loss"]) for r in metric_rows(run_dir)]
        assert sum(losses[-4:]) < sum(losses[:4]) * 0.95, (run_dir.name, losses)
        loaded = load_for_generation(str(run_dir))
        assert next(loaded.model.parameters()).dtype == inference_dtype(dtype, "cpu")
        for forced in (torch.float32, torch.bfloat16):
            loaded = load_for_generation(str(run_dir), dtype=forced)
            assert next(loaded.model.parameters()).dtype == forced
            replies = generate_replies(loaded, [[{"role": "user", "content": "Where is my order?"}]], max_new_tokens=4)
            assert replies[0].completion_tokens >= 1
    loaded = load_for_generation(str(full))
    assert loaded.fully_fine_tuned
    with pytest.raises(ValueError, match="full fine-tune"):
        generate_replies(loaded, [[{"role": "user", "content": "hi"}]], max_new_tokens=2, use_adapter=False)


def test_qlora_and_gpu_kernels_are_refused_on_a_cpu_with_the_reason(tmp_path, data_files, tiny_model_dir):
    for flags, phrase in [(["--adapter", "qlora"], "CUDA"), (["--kernels", "unsloth"], "CUDA")]:
        result = run_cli("train", "--data", str(data_files[0]), "--model", str(tiny_model_dir), "--out",
                         str(tmp_path / "never"), *flags)
        assert result.returncode == 1 and phrase.encode() in result.stderr, result.stderr
        assert not (tmp_path / "never").exists()


def test_early_stopping_keeps_the_best_weights(tmp_path, data_files, tiny_model_dir):
    # A learning rate 500 times the usual makes validation loss rise between the 2nd and 3rd evaluation
    # (steps 4 → 6) on this model, seed and data; with patience 1 training stops there.
    run_dir = run(settings(data_files, tiny_model_dir, tmp_path / "run", validation=str(data_files[1]), n_epochs=10,
                           learning_rate_multiplier=500, eval_every=2, early_stopping_patience=1))
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    stop = next(e for e in events if e["message"].startswith("Early stopping"))
    valid = {int(r["step"]): float(r["valid_loss"]) for r in metric_rows(run_dir) if r["valid_loss"]}
    assert stop["data"]["stopped_at"] == max(valid) < 40  # stopped at an evaluation, long before the end
    assert valid[max(valid)] > min(valid.values())
    assert stop["data"]["step"] == min(valid, key=valid.get) == 4  # and kept the best evaluation's weights:
    best = load_file(run_dir / "checkpoints" / "step-000004" / "trainable.safetensors")  # (epoch 1's end)
    saved = adapter(run_dir)
    assert saved and all(torch.equal(t, best[name.replace(".weight", ".default.weight")]) for name, t in saved.items())
    assert json.loads((run_dir / "job.json").read_text())["status"] == "succeeded"


def test_validation_split_holds_out_a_slice(tmp_path, data_files, tiny_model_dir):
    run_dir = run(settings(data_files, tiny_model_dir, tmp_path / "run", validation_split=0.25, n_epochs=1))
    rows = metric_rows(run_dir)
    assert len(rows) == 3  # 12 of the 16 examples left to train on, batch 4
    assert rows[-1]["valid_loss"] and rows[-1]["valid_mean_token_accuracy"]


def launch_two_processes(*arguments: str, fsdp: bool = False) -> subprocess.CompletedProcess:
    """`accelerate launch` of `tunelab train` in two CPU processes (sharded with FSDP2 if asked)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no",
              *(["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"]),
              "-m", "tunelab.cli", "train", *arguments, "--quiet"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(launch, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("RUN:") == 1  # one report, from the first process
    return result


def training_arguments(data_files, model_dir, out, **changes) -> list[str]:
    """The command-line flags of `settings(...)` with the same changes."""
    config = settings(data_files, model_dir, out, **changes)
    defaults = TrainConfig()
    flags = []
    for name, value in config.to_dict().items():
        if value != getattr(defaults, name):
            flag = f"--{name.replace('_', '-')}"
            flags += [flag] if value is True else [flag, str(value)]
    return flags


@pytest.mark.slow
def test_two_processes_under_accelerate_match_one(tmp_path, data_files, tiny_model_dir):
    single = run(settings(data_files, tiny_model_dir, tmp_path / "single", n_epochs=2))
    out = tmp_path / "two"
    result = launch_two_processes(*training_arguments(data_files, tiny_model_dir, out, n_epochs=2))
    assert "× 2 processes" in " ".join(result.stderr.split()) and "FSDP" not in result.stderr
    for a, b in zip(metric_rows(single), metric_rows(out)):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-4)
    expected = adapter(single)
    for name, tensor in adapter(out).items():
        # As in the accumulation test: Adam can turn summation-order rounding on a near-zero gradient into
        # a small part of one step (measured: one element off by 2e-5, with weights up to 0.1).
        assert torch.allclose(tensor, expected[name], rtol=1e-3, atol=1e-4), name


# Batches of 3 over 2 processes, one example per pass: one process makes two passes and the other one,
# and the last batch of each epoch (16 = 5 × 3 + 1) leaves one process with nothing but a pass that keeps
# it in step. Validation (8 examples) runs on both.
UNEVEN = dict(n_epochs=2, batch_size=3, micro_batch_size=1)


@pytest.mark.slow
def test_fsdp_sharded_lora_matches_one_process_and_checkpoints_whole_tensors(tmp_path, data_files, tiny_model_dir):
    changes = dict(UNEVEN, validation=str(data_files[1]))
    single = run(settings(data_files, tiny_model_dir, tmp_path / "single", **changes))
    out = tmp_path / "sharded"
    # Asked for in the settings (`--fsdp`) here; by `accelerate launch --use_fsdp` in the next test.
    result = launch_two_processes(*training_arguments(data_files, tiny_model_dir, out, fsdp=True, **changes))
    assert "× 2 processes (FSDP: weights sharded)" in " ".join(result.stderr.split())  # unwrapped
    share = next(e["data"] for e in map(json.loads, (out / "events.jsonl").read_text().splitlines())
                 if "weights_held" in e["data"])
    assert share["weights_held"] <= share["weights"] // 2 + 2048  # half, give or take uneven slices
    single_rows, sharded_rows = metric_rows(single), metric_rows(out)
    assert len(sharded_rows) == len(single_rows) == 12
    for a, b in zip(single_rows, sharded_rows):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-4)
        assert float(b["train_accuracy"]) == pytest.approx(float(a["train_accuracy"]), abs=1e-9)
        assert bool(a["valid_loss"]) == bool(b["valid_loss"])
        if a["valid_loss"]:
            assert float(b["valid_loss"]) == pytest.approx(float(a["valid_loss"]), rel=1e-4)
    expected = adapter(single)
    assert set(adapter(out)) == set(expected)
    for name, tensor in adapter(out).items():
        assert torch.allclose(tensor, expected[name], rtol=1e-3, atol=1e-4), name
    # Checkpoints hold whole tensors (gathered from the slices), the same as a one-process run writes.
    single_checkpoint, sharded_checkpoint = (latest_checkpoint(RunDir(run).checkpoints_dir) for run in (single, out))
    assert sharded_checkpoint.step == single_checkpoint.step == 12
    for file in ("trainable.safetensors", "optimizer.safetensors"):
        reference, gathered = (load_file(c.path / file) for c in (single_checkpoint, sharded_checkpoint))
        assert set(gathered) == set(reference)
        for name, tensor in gathered.items():
            assert tensor.shape == reference[name].shape, (file, name)
            assert torch.allclose(tensor, reference[name], rtol=1e-3, atol=1e-4), (file, name)


@pytest.mark.slow
def test_fsdp_full_fine_tuning_resumes_a_one_process_checkpoint_to_the_same_model(tmp_path, data_files,
                                                                                  tiny_model_dir):
    """Every weight sharded, the tied LM head included; the optimizer state sliced from a whole checkpoint."""
    changes = dict(UNEVEN, adapter="full", learning_rate_multiplier=50)
    uninterrupted = run(settings(data_files, tiny_model_dir, tmp_path / "uninterrupted", **changes))
    out = tmp_path / "resumed"
    run(settings(data_files, tiny_model_dir, out, **changes), should_stop=lambda step: step == 8)
    assert latest_checkpoint(RunDir(out).checkpoints_dir).step == 6  # the end of epoch 1, written by one process
    result = launch_two_processes("--resume", str(out), fsdp=True)
    assert "Resumed from checkpoint at step 6" in (out / "events.jsonl").read_text()
    assert "FSDP: weights sharded" in " ".join(result.stderr.split())
    expected_rows, resumed_rows = metric_rows(uninterrupted), metric_rows(out)
    assert len(resumed_rows) == len(expected_rows) == 12
    for a, b in zip(expected_rows, resumed_rows):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-4)
    expected = load_file(uninterrupted / "model" / "model.safetensors")
    resumed = load_file(out / "model" / "model.safetensors")
    assert set(resumed) == set(expected)
    base = load_file(Path(tiny_model_dir) / "model.safetensors")
    for name, tensor in resumed.items():
        assert torch.allclose(tensor, expected[name], rtol=1e-3, atol=1e-4), name
        assert not torch.equal(tensor, base[name]), f"{name} did not train"


def test_template_agreement_check_names_file_line_and_message(tiny_tokenizer, tmp_path):
    conversations = [(1, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}),
                     (2, {"messages": [{"role": "user", "content": "Help"},
                                       {"role": "assistant", "content": "Sure, here is how."}]})]
    assert check_template_agreement(tiny_tokenizer, conversations, "train.jsonl") == 2
    merging = copy.deepcopy(tiny_tokenizer)
    # A token spanning the end of the generation prompt and the start of a reply: the prompt alone
    # tokenizes as "…model", "\n", while the training text has "…model", "\nSure".
    merging.add_tokens(["\nSure"])
    with pytest.raises(TemplateMismatch) as caught:
        check_template_agreement(merging, conversations, "train.jsonl")
    assert str(caught.value).startswith("train.jsonl:2: messages[1]: the prompt sent at inference tokenizes differently")
    # Every conversation is checked, not a leading sample: a bad reply on line 1,500 is found too.
    many = [(line, conversations[0][1]) for line in range(1, 1500)] + [(1500, conversations[1][1])]
    with pytest.raises(TemplateMismatch) as caught:
        check_template_agreement(merging, many, "train.jsonl")
    assert str(caught.value).startswith("train.jsonl:1500: messages[1]:")
