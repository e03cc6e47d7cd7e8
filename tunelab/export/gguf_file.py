"""Write a Hugging Face checkpoint as a GGUF file for llama.cpp and Ollama, with the `gguf` library.

    write_gguf("out/merged", "out/model.gguf", "f16", chat_template=..., end_of_turn_id=106,
               tokenizer_source=Path("gemma-3-270m.gguf"))

llama.cpp's conventions, as its own converter (`convert_hf_to_gguf.py`) writes them:
- tensor names from the `gguf` package's per-architecture map (`blk.N.attn_q.weight`, …); a tied output
  head is not written (llama.cpp ties it back);
- Gemma stores each RMSNorm weight as w + 1 (Gemma's norm multiplies by 1 + w, llama.cpp's by w);
- Llama's q and k projections are permuted to llama.cpp's rotary layout (Qwen2 and Gemma need no permute);
- 1-D tensors (norms, biases) stay f32; matrices take the requested type (a row length q8_0 cannot
  split into its 32-value blocks falls back to f16, as llama.cpp does);
- the tokenizer: copied from the GGUF the base model came from, when it came from one (the embedded
  default does), so llama.cpp tokenizes exactly as it does for that file; otherwise built from the
  Hugging Face tokenizer (byte-level BPE with its merges, or a SentencePiece-style vocabulary with scores);
- `tokenizer.chat_template` is the template the run trained with, and the EOS token is the template's
  end-of-turn token (llama.cpp and Ollama stop on EOS; a model that stops on `<eos>` only never ends a turn).

k-quants (`q4_k_m`) are made from the f16 file by llama.cpp's own quantizer (`export.quantize_with_llama_cpp`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tunelab.core.events import NO_EVENTS, Events

# GGUF number formats written from Python: name → (tensor type, file type)
PYTHON_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
                "q8_0": ("Q8_0", "MOSTLY_Q8_0")}
# model_type in config.json → llama.cpp architecture, and whether q/k are permuted for its rotary layout
ARCHITECTURES = {"gemma3_text": ("GEMMA3", False), "gemma3": ("GEMMA3", False), "llama": ("LLAMA", True),
                 "mistral": ("LLAMA", True), "qwen2": ("QWEN2", False)}


class UnsupportedForGGUF(ValueError):
    """A model this writer does not know how to lay out for llama.cpp; the message says what to do."""


def write_gguf(model_dir: str | Path, out: str | Path, number_format: str, *, chat_template: str,
               end_of_turn_id: int | None, tokenizer_source: Path | None = None, name: str = "",
               events: Events = NO_EVENTS) -> Path:
    """Write the checkpoint in `model_dir` (config.json, safetensors, tokenizer) as the GGUF file `out`."""
    import gguf
    from safetensors import safe_open

    model_dir, out = Path(model_dir), Path(out)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config) if config.get("model_type") == "gemma3" else config
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UnsupportedForGGUF(f"GGUF export knows {', '.join(sorted(set(ARCHITECTURES) - {'gemma3'}))} models, "
                                 f"not {model_type!r}; export --format merged and convert that with llama.cpp's "
                                 "convert_hf_to_gguf.py")
    if number_format not in PYTHON_TYPES:
        raise ValueError(f"{number_format!r} is not written from Python; one of {', '.join(PYTHON_TYPES)}")
    scaling = config.get("rope_scaling") or {}
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default", "linear"):
        raise UnsupportedForGGUF(f"rope scaling {scaling.get('rope_type', scaling.get('type'))!r} is not written yet; "
                                 "export --format merged and convert that with llama.cpp's convert_hf_to_gguf.py")
    arch_name, permute_qk = ARCHITECTURES[model_type]
    if arch_name == "GEMMA3":
        _check_gemma_attention_scale(config)
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    tensor_type, file_type = (getattr(gguf.GGMLQuantizationType, PYTHON_TYPES[number_format][0]),
                              getattr(gguf.LlamaFileType, PYTHON_TYPES[number_format][1]))

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name or model_dir.name)
    writer.add_file_type(file_type)
    _add_hyperparameters(writer, config, arch_name)
    vocab_size = _add_tokenizer(writer, model_dir, tokenizer_source, config, end_of_turn_id)
    writer.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    files = sorted(model_dir.glob("*.safetensors"))
    tied = config.get("tie_word_embeddings", True)
    count = 0
    for file in files:
        with safe_open(str(file), framework="pt") as tensors:
            for key in tensors.keys():
                if key == "lm_head.weight" and tied:
                    continue
                gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UnsupportedForGGUF(f"{file.name}: tensor {key} has no llama.cpp name for {arch_name}")
                data = tensors.get_tensor(key).to(torch.float32)
                if arch_name == "GEMMA3" and key.endswith("norm.weight"):
                    data = data + 1  # Gemma's RMSNorm scales by (1 + w); llama.cpp's by w
                if permute_qk and key.endswith(("q_proj.weight", "k_proj.weight")):
                    heads = config["num_attention_heads"]
                    data = _permute(data, heads, heads if "q_proj" in key else config.get("num_key_value_heads", heads))
                if key == "model.embed_tokens.weight":
                    data = data[:vocab_size]  # rows past the vocabulary (padding) have no token
                _add_tensor(writer, gguf_name, data.numpy(), tensor_type)
                count += 1
    events.message(f"writing {count} tensors ({number_format}) to {out.name}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return out


def _check_gemma_attention_scale(config: dict) -> None:
    """Gemma scales queries by 1/sqrt(query_pre_attn_scalar); GGUF has no key for it, and llama.cpp uses
    1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 62-layer 27B), so any other value would change answers."""
    head_dim = config.get("head_dim", 256)
    scalar = config.get("query_pre_attn_scalar", 256)
    llama_cpp_scalar = config["hidden_size"] / config["num_attention_heads"] if config["num_hidden_layers"] == 62 \
        else head_dim
    if scalar != llama_cpp_scalar:
        raise UnsupportedForGGUF(f"query_pre_attn_scalar {scalar} differs from what llama.cpp assumes for this model "
                                 f"({llama_cpp_scalar:g}), and GGUF cannot say otherwise: a GGUF would answer "
                                 "differently; export --format merged instead")


def _permute(weights: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """Llama's rotary halves interleaved the way llama.cpp's kernels read them (its converter's `permute`)."""
    heads = kv_heads if kv_heads != heads else heads
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tensor(writer, name: str, data: np.ndarray, tensor_type) -> None:
    import gguf

    if data.ndim == 1 or tensor_type == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data.astype(np.float32))
        return
    if tensor_type == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
        return
    block = gguf.GGML_QUANT_SIZES[tensor_type][0]
    if data.shape[-1] % block:  # llama.cpp's converter falls back the same way
        writer.add_tensor(name, data.astype(np.float16))
        return
    writer.add_tensor(name, gguf.quants.quantize(data, tensor_type), raw_dtype=tensor_type)


def _add_hyperparameters(writer, config: dict, arch_name: str) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config.get("max_position_embeddings", 8192))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    rope = config.get("rope_parameters") or {}
    theta = (rope.get("full_attention", rope).get("rope_theta") if isinstance(rope, dict) else None) \
        or config.get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    if arch_name == "GEMMA3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        if config.get("sliding_window"):
            writer.add_sliding_window(config["sliding_window"])
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    else:
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config["vocab_size"])


def _add_tokenizer(writer, model_dir: Path, source: Path | None, config: dict, end_of_turn_id: int | None) -> int:
    """The vocabulary and special tokens; returns the vocabulary size. llama.cpp and Ollama stop at EOS, so
    EOS is the template's end-of-turn token (also written as EOT)."""
    size = _copy_tokenizer(writer, source) if source is not None else _write_tokenizer(writer, model_dir, config,
                                                                                        end_of_turn_id)
    if end_of_turn_id is not None:
        if source is not None:
            writer.add_eos_token_id(end_of_turn_id)
        writer.add_eot_token_id(end_of_turn_id)
    return size


def _special_tokens(writer, model_dir: Path, size: int, end_of_turn_id: int | None, merges: bool) -> None:
    import gguf

    special = gguf.SpecialVocab(model_dir, load_merges=merges, n_vocab=size)
    if end_of_turn_id is not None:
        special.special_token_ids["eos"] = end_of_turn_id
    special.chat_template = None  # the run's template is written by the caller, once
    special.add_to_gguf(writer, quiet=True)


def _write_tokenizer(writer, model_dir: Path, config: dict, end_of_turn_id: int | None) -> int:
    import gguf
    from transformers import AutoTokenizer

    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tokenizer_json["model"]
    if model.get("type") == "BPE" and model.get("byte_fallback"):  # SentencePiece-style (Llama 2, Mistral)
        vocab = gguf.LlamaHfVocab(model_dir)
        tokens, scores, types = zip(*vocab.all_tokens())
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(list(tokens))
        writer.add_token_scores(list(scores))
        writer.add_token_types(list(types))
        _special_tokens(writer, model_dir, len(tokens), end_of_turn_id, merges=False)
        return len(tokens)
    if model.get("type") != "BPE":
        raise UnsupportedForGGUF(f"{model_dir}: a {model.get('type')} tokenizer is not written yet (byte-level BPE "
                                 "and SentencePiece-style BPE are)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    # llama.cpp's converter: Gemma's embedding is cut to the real vocabulary, others keep their padded rows
    # and get a placeholder token for each
    size = len(by_id) if config.get("model_type", "").startswith("gemma") else max(len(by_id), config["vocab_size"])
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        types.append(gguf.TokenType.NORMAL if index not in added else
                     gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    _special_tokens(writer, model_dir, len(tokens), end_of_turn_id, merges=True)
    return len(tokens)


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for how text is split before BPE: found by the splitting pattern, which must be one
    llama.cpp knows; plain byte-level splitting is GPT-2's (`gpt-2`)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    patterns = []

    def collect(node):
        if isinstance(node, dict):
            if node.get("type") == "Split":
                patterns.append(node.get("pattern", {}).get("Regex"))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(tokenizer_json.get("pre_tokenizer") or {})
    if not patterns:  # byte-level splitting with GPT-2's own pattern
        return "gpt-2"
    for name, split in GGUF_PRE_TOKENIZER_SPLITS.items():
        if patterns[0] == split:
            return name
    raise UnsupportedForGGUF("the tokenizer splits text with a pattern llama.cpp has no name for, so a GGUF "
                             "would tokenize differently; export --format merged and convert it with llama.cpp's "
                             "convert_hf_to_gguf.py")


_COPIED_TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                          "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                          "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                          "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                          "tokenizer.ggml.add_space_prefix")


def _copy_tokenizer(writer, source: Path) -> int:
    """The tokenizer fields of the GGUF the base model came from, as they were (EOS is set by the caller)."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    for key in _COPIED_TOKENIZER_KEYS:
        field = reader.fields.get(key)
        if field is None:
            continue
        value_type = field.types[0]
        if value_type == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), value_type, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), value_type)
    return len(reader.fields["tokenizer.ggml.tokens"].data)
