"""`tunelab export`: a run as a merged model, a GGUF, an Ollama model or a PEFT adapter, verified before it is kept.

    tunelab export runs/ftjob-… --format gguf --dtype q8_0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.markup import escape

from tunelab.cli.common import examples, fail, first_line, out, say
from tunelab.cli.console import ConsoleEvents
from tunelab.core.events import Events
from tunelab.core.files import StorageError

EXAMPLES = examples("tunelab export runs/ftjob-abc123",
                    "tunelab export runs/ftjob-abc123 --format gguf --dtype q8_0",
                    "tunelab export runs/ftjob-abc123 --format ollama --out support-model")

# The command line's one spelling of number formats (as train, eval and chat); GGUF's own names are the
# export library's, and appear in the files it writes (model-f16.gguf).
DTYPE_NAMES = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "q8_0": "q8_0", "q4_k_m": "q4_k_m"}
ACCEPTED_NAMES = {**DTYPE_NAMES, "f32": "f32", "f16": "f16"}  # GGUF's own names, accepted as before, not shown


def export(
    run: Path = typer.Argument(..., metavar="RUN", help="A finished run directory."),
    format: Literal["merged", "gguf", "ollama", "adapter"] = typer.Option(
        "merged", "--format", help="merged (Hugging Face safetensors), gguf (llama.cpp), ollama (GGUF + Modelfile) or adapter (PEFT, for vLLM, SGLang, LoRAX)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", metavar="[fp32|bf16|fp16|q8_0|q4_k_m]", help="merged: fp32, bf16 or fp16 (default: the base model's); gguf and ollama: fp16 (default), bf16, fp32, q8_0, or q4_k_m (needs llama.cpp)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", metavar="PATH", help="Where to write it (default RUN/export/NAME); never overwritten without --force."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", metavar="FILE", help="Chat JSONL whose prompts the export is verified on (default: the run's validation file, else its training file)."),
    verify_prompts: int = typer.Option(10, "--verify-prompts", min=1, metavar="N", help="How many prompts to verify on."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing export (only once the new one has passed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result and the verification figures as JSON."),
) -> None:
    """Export a run for use outside tunelab, verified before it is kept: reloaded and compared with the run's
    own model on held-out prompts (next-token logits and greedy continuations)."""
    from tunelab.export.gguf_file import UnsupportedForGGUF
    from tunelab.export.run import ExportConfig, ExportFailed
    from tunelab.export.run import export as run_export

    number_format = ACCEPTED_NAMES.get(dtype.lower()) if dtype else None
    if dtype and number_format is None:
        fail(f"--dtype: {dtype!r} is not one of {', '.join(DTYPE_NAMES)}", 2)
    config = ExportConfig(str(run), format, number_format, out_path and str(out_path), prompts and str(prompts),
                          verify_prompts, force)
    try:
        result = run_export(config, Events(ConsoleEvents(progress=not as_json)))
    except (ExportFailed, UnsupportedForGGUF) as error:
        fail(str(error))
    except StorageError as error:
        fail(f"{error}; nothing was left in place — free space (or choose another --out) and export again")
    except OSError as error:
        fail(f"{run}: the export could not be written ({first_line(error)}); nothing was left in place")
    if as_json:
        print(json.dumps({"path": str(result.path), "format": result.format, "dtype": result.number_format,
                          "verified_on": result.prompts_source, "checks": [c.as_dict() for c in result.checks],
                          "notes": result.notes, "next_step": result.next_step}, indent=2))
        return
    say(f"verified on {result.prompts_source}:")
    for check in result.checks:
        say(f"  ✓ {check.summary()}")
    for note in result.notes:
        out.print(f"[yellow]note: {escape(note)}[/]")
    say(f"EXPORTED: {result.path}")
    say(f"next: {result.next_step}")
