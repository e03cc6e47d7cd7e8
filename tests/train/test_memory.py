"""The memory plan (train/memory.py) and the out-of-memory retry: plans for a Llama-3-8B-shaped model on a
24 GB and an 80 GB GPU, the plan for the default model against a real run's measured peak on this CPU, and
a step that runs out of memory done again at half the micro-batch, ending where a run started there ends."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tunelab.core.settings import TrainConfig

# Meta-Llama-3-8B's config.json, as its hub repository has it (the sizes memory depends on).
LLAMA_3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
              "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False, "bos_token_id": 128000,
              "eos_token_id": 128001, "torch_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def llama_8b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-3-8b")
    (folder / "config.json").write_text(json.dumps(LLAMA_3_8B))
    return folder


def plan_json(*arguments) -> tuple[int, dict]:
    finished = run_cli("train", "--plan", "--json", *arguments)
    return finished.returncode, json.loads(finished.stdout)


def test_an_8b_model_is_planned_for_a_24_and_an_80_gb_gpu_from_its_config_alone(llama_8b):
    code, on_80 = plan_json("--model", str(llama_8b), "--memory", "80GB", "--plan-device", "cuda")
    parts = on_80["parts_bytes"]
    assert code == 0 and on_80["fits"] and on_80["adapter"] == "lora"
    assert 15.5e9 < parts["weights"] < 16.5e9  # 8.03B parameters in bf16
    assert on_80["micro_batch_size"] == 8 and not on_80["gradient_checkpointing"]
    assert on_80["peak_bytes"] <= 80e9

    code, on_24 = plan_json("--model", str(llama_8b), "--memory", "24GB", "--plan-device", "cuda")
    assert code == 0 and on_24["fits"] and on_24["peak_bytes"] <= 24e9
    assert on_24["gradient_checkpointing"] or on_24["micro_batch_size"] < 8 or on_24["adapter"] == "qlora"
    assert on_24["choices"]  # what it changed is said

    code, qlora = plan_json("--model", str(llama_8b), "--adapter", "qlora", "--memory", "24GB", "--plan-device", "cuda")
    assert code == 0 and qlora["parts_bytes"]["weights"] < 6.5e9  # the origin documents' 8B in 4 bits

    code, full = plan_json("--model", str(llama_8b), "--adapter", "full", "--memory", "24GB", "--plan-device", "cuda")
    assert code == 1 and not full["fits"] and "does not fit" in full["choices"][-1]
    text = run_cli("train", "--plan", "--model", str(llama_8b), "--memory", "80GB", "--plan-device", "cuda")
    assert text.returncode == 0 and b"activations" in text.stdout and b"fits" in text.stdout


def test_planning_for_another_device_needs_a_memory_size(llama_8b):
    here = "cuda" if torch.cuda.is_available() else "cpu"
    other = "cpu" if here == "cuda" else "cuda"
    finished = run_cli("train", "--plan", "--model", str(llama_8b), "--plan-device", other)
    assert finished.returncode == 1 and b"--memory" in finished.stderr
    finished = run_cli("train", "--plan", "--model", str(llama_8b), "--memory", "lots")
    assert finished.returncode == 1 and b"24GB" in finished.stderr


TRAIN_AND_MEASURE = """
import json, resource, sys
from tunelab.core.process import keep_freed_memory
from tunelab.core.settings import TrainConfig
from tunelab.train.local import train
keep_freed_memory()
train(TrainConfig(**json.loads(sys.argv[1])))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
@pytest.mark.heavy
def test_the_plan_for_the_default_model_is_within_a_quarter_of_a_real_run_s_peak(tmp_path, support_conversations):
    data = tmp_path / "train.jsonl"  # one step of 8: the peak is the step's
    data.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:8]))
    settings = dict(data=str(data), out=str(tmp_path / "run"), n_epochs=1, batch_size=8)
    code, planned = plan_json("--data", str(data), "--n-epochs", "1", "--batch-size", "8")
    assert code == 0 and planned["micro_batch_size"] == 8
    finished = subprocess.run([sys.executable, "-c", TRAIN_AND_MEASURE, json.dumps(settings)], capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    measured = int(finished.stdout.split()[-1])
    print(f"plan {planned['peak_bytes'] / 2**30:.2f} GiB, measured {measured / 2**30:.2f} GiB")
    assert 0.75 <= planned["peak_bytes"] / measured <= 1.25, (planned["parts_bytes"], measured)


def test_a_step_out_of_memory_is_done_again_at_half_the_micro_batch(tmp_path, tiny_model_dir, support_conversations,
                                                                    monkeypatch):
    from tunelab.train import loss as loss_module
    from tunelab.train.local import train

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:16]))

    def config(out, **changes):
        return TrainConfig(**dict(data=str(data), model=str(tiny_model_dir), out=str(tmp_path / out), n_epochs=2,
                                  batch_size=8, learning_rate_multiplier=25, dtype="fp32", seed=5, **changes))

    smaller = train(config("started-at-2", micro_batch_size=2))
    # A device with room for two examples a pass: more raises what CUDA raises (a CPU cannot run out this way).
    real_forward = loss_module.TrainedTokenLoss.forward

    def forward_with_room_for_two(self, input_ids, attention_mask, labels):
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, input_ids, attention_mask, labels)

    monkeypatch.setattr(loss_module.TrainedTokenLoss, "forward", forward_with_room_for_two)
    retried = train(config("started-at-8"))
    monkeypatch.undo()

    events = [json.loads(line) for line in (retried / "events.jsonl").read_text().splitlines()]
    halvings = [e for e in events if "micro_batch_size" in (e.get("data") or {})]
    assert [e["data"]["micro_batch_size"] for e in halvings] == [4, 2]
    assert all(e["data"]["step"] == 1 for e in halvings)  # found at the first step, kept after
    for name, tensor in load_file(smaller / "adapter" / "adapter_model.safetensors").items():
        assert torch.equal(tensor, load_file(retried / "adapter" / "adapter_model.safetensors")[name]), name
    def losses(run):
        return [row["train_loss"] for row in csv.DictReader((run / "metrics.csv").open())]

    assert losses(smaller) == losses(retried)

    with pytest.raises(torch.OutOfMemoryError):  # no room even for one example: the run fails, saying so
        monkeypatch.setattr(loss_module.TrainedTokenLoss, "forward",
                            lambda *args: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory.")))
        train(config("no-room"))
    assert json.loads((tmp_path / "no-room" / "job.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_a_run_takes_the_plan_s_choices_within_its_memory_and_one_that_cannot_fit_is_refused(
        tmp_path, support_conversations, monkeypatch):
    import yaml

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:8]))
    # A tenth below what micro-batches of 8 need on this CPU (bf16 or fp32)
    _code, whole = plan_json("--data", str(data), "--n-epochs", "1", "--batch-size", "8", "--micro-batch-size", "8")
    budget = int(whole["peak_bytes"] * 0.9)
    monkeypatch.setenv("TUNELAB_MEMORY", str(budget))
    finished = run_cli("train", "--data", str(data), "--n-epochs", "1", "--batch-size", "8", "--out",
                       str(tmp_path / "run"), "--quiet")
    assert finished.returncode == 0, finished.stderr
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["micro_batch_size"] < 8 or config["gradient_checkpointing"]
    assert b"Memory plan:" in finished.stderr
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    plan = next(e["data"]["memory_plan"] for e in events if "memory_plan" in (e.get("data") or {}))
    assert plan["fits"] and plan["peak_bytes"] <= budget

    monkeypatch.setenv("TUNELAB_MEMORY", "600MB")
    refused = run_cli("train", "--data", str(data), "--out", str(tmp_path / "refused"), "--quiet")
    assert refused.returncode == 1 and b"does not fit" in refused.stderr and b"Traceback" not in refused.stderr
    assert not (tmp_path / "refused" / "job.json").exists()  # refused before anything was written
