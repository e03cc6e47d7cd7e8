"""The prepared GPU check runs whole on the CPU (`--tiny`), so a lent GPU's minutes are not spent finding its
bugs: every stage ends ok and its figures are what the stage is for."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.heavy(seconds=40)
def test_every_stage_of_the_gpu_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.jsonl"
    finished = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--out", str(out)],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    stages = {line["stage"]: line for line in map(json.loads, out.read_text().splitlines())}
    assert list(stages) == ["versions", "numerics", "plan-8b", "train", "hf-trainer", "train-checkpointing",
                            "train-liger", "serve", "qlora-8b"]
    assert stages["train-liger"]["status"] == "skipped: Liger's kernels need CUDA and liger-kernel"
    assert all(stage["status"] == "ok" for name, stage in stages.items() if name != "train-liger")
    assert "GPU check summary" in finished.stdout
    numerics = stages["numerics"]
    assert numerics["loss_gradient_error_confident"] < 0.1 and numerics["fast_path_max_gradient_error"] < 1e-4
    assert numerics["fast_path_gradients"] > 0
    assert stages["plan-8b"]["qlora"]["peak_gib"] < stages["plan-8b"]["lora"]["peak_gib"]
    assert stages["train"]["tokens_per_s"] > 0 and stages["train"]["loss_last"] < stages["train"]["loss_first"]
    hf = stages["hf-trainer"]  # the baseline trains the same tokens
    assert hf["tokens"] == stages["train"]["tokens"] and hf["loss_last"] < hf["loss_first"]
    assert stages["train-checkpointing"]["checkpointing"] is True
    assert stages["train-checkpointing"]["loss_first"] == pytest.approx(stages["train"]["loss_first"], rel=1e-3)
    assert stages["qlora-8b"]["adapter"] == "lora" and stages["qlora-8b"]["tokens_per_s"] > 0
    serve = stages["serve"]
    assert serve["jobs"] == ["succeeded", "succeeded"] and serve["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:")
    assert serve["concurrent_answers"] == 8 and serve["streamed_chars"] > 0
    assert (serve["models_loaded"], serve["fine_tunes_attached"]) == (1, 2)  # one base serves both fine-tunes
