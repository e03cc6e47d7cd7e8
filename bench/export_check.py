"""Every export of one run, verified, in one table: what `tunelab export` checks, for each format at once.

    .venv/bin/python bench/export_check.py RUN [--prompts FILE] [--merged-prompts 20] [--gguf-prompts 10]
                                           [--formats merged:f32,merged:bf16,gguf:f16,gguf:q8_0,gguf:q4_k_m]

For each format it runs the export into a scratch directory (the same code path as the command: build,
reload, compare with the run's own model — base plus adapter, not merged, fp32 — then keep) and prints
per checker: the largest next-token logit difference, top-token agreement, and how many greedy
continuations are identical. With llama.cpp installed (`pip install -e '.[llama]'`) each GGUF is also
loaded in llama.cpp, and `q4_k_m` is made by its quantizer; without it those rows say so. Prompts default
to the support example's held-out questions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tunelab.export.run import ExportConfig, ExportFailed, export, llama_cpp_installed

QUESTIONS = Path(__file__).resolve().parent.parent / "tunelab" / "examples" / "support" / "test.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--prompts", default=str(QUESTIONS))
    parser.add_argument("--merged-prompts", type=int, default=20)
    parser.add_argument("--gguf-prompts", type=int, default=10)
    parser.add_argument("--formats", default="merged:f32,merged:bf16,gguf:f16,gguf:q8_0,gguf:q4_k_m")
    arguments = parser.parse_args()
    print(f"llama.cpp installed: {llama_cpp_installed()}")
    with tempfile.TemporaryDirectory(prefix="export-check-") as scratch:
        for entry in arguments.formats.split(","):
            format, dtype = entry.split(":")
            if dtype == "q4_k_m" and not llama_cpp_installed():
                print(f"{format} {dtype}: skipped — needs llama.cpp's quantizer (pip install -e '.[llama]')")
                continue
            count = arguments.merged_prompts if format == "merged" else arguments.gguf_prompts
            start = time.monotonic()
            try:
                result = export(ExportConfig(arguments.run, format, dtype, str(Path(scratch) / entry.replace(":", "-")),
                                             arguments.prompts, count))
            except ExportFailed as error:
                print(f"{format} {dtype}: FAILED\n{error}")
                continue
            size = sum(p.stat().st_size for p in ([result.path] if result.path.is_file() else result.path.rglob("*")))
            print(f"{format} {dtype}: kept ({size / 1e6:.0f} MB, {time.monotonic() - start:.0f} s)")
            for check in result.checks:
                print(f"  {check.summary()}")
            for note in result.notes:
                print(f"  note: {note}")


if __name__ == "__main__":
    main()
