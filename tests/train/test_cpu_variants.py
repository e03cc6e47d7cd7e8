"""Both kinds of CPU on any machine: the bf16 checks rerun with the CPU's bf16 units switched off.

Our machines are of one kind but not of one CPU: some multiply bf16 natively (AVX-512 BF16, AMX), some
have AVX2 only and emulate it. `ONEDNN_MAX_CPU_ISA=AVX2` and `ATEN_CPU_CAPABILITY=avx2` make PyTorch use
exactly the AVX2 kernels, so a machine with bf16 units also proves the other path (on an AVX2 machine the
rerun takes the path the suite already took). The pinned bf16 losses must hold on both.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test here starts subprocesses

ROOT = Path(__file__).resolve().parents[2]
AVX2_ONLY = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")


def test_an_avx2_cpu_chooses_fp32_and_passes_the_forced_bf16_checks():
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; from tunelab.models.precision import resolve_dtype; "
                               "print(torch.ops.mkldnn._is_mkldnn_bf16_supported(), resolve_dtype('auto', 'cpu'))"],
        capture_output=True, text=True, env=AVX2_ONLY, check=True)
    assert probe.stdout.split() == ["False", "torch.float32"]  # no bf16 units: `auto` is fp32

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return  # this suite is running on the AVX2 path already: its own bf16 checks are the rerun's
    checks = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/train/test_engine.py",
         "tests/train/test_loss_numerics.py", "-k", "bf16"],
        capture_output=True, text=True, env=AVX2_ONLY, cwd=ROOT, timeout=900)
    assert checks.returncode == 0, checks.stdout[-3000:]
    # fused loss ×3, fast LoRA layers, fused norms, accumulation, pinned loss, resume, DoRA + full, and the
    # fused loss on confident predictions ×6: all forced to bf16.
    assert "15 passed" in checks.stdout.splitlines()[-1], checks.stdout[-500:]
