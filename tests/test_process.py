"""Process-wide settings made by tunelab's entry points (core/process.py)."""

import subprocess
import sys

import pytest

LOAD_AND_COUNT = """
import gc, sys
from tunelab.core.process import configure_process
configure_process()
import tunelab.train.local
print(gc.get_stats()[2]["collections"], gc.get_threshold()[2])
"""


@pytest.mark.slow
def test_loading_what_training_needs_takes_no_full_garbage_collection():
    # A fresh process, as an entry point has: at Python's default thresholds this loading makes three full
    # collections, each scanning every object PyTorch, transformers and PEFT have created so far.
    finished = subprocess.run([sys.executable, "-c", LOAD_AND_COUNT], capture_output=True, text=True, check=True)
    assert finished.stdout.split() == ["0", "100"]
