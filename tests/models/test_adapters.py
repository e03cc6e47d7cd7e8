"""Several fine-tunes served from one copy of their base: each token gets its own adapter as PEFT computes it
(models/adapters.py), continuous batching mixes requests to different adapters in one step and each reply
is the one that adapter gives alone (models/serving.py), and the cache is sized from the device's memory."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tunelab.conversation.reader import split_prompt_and_reply
from tunelab.conversation.render import render_prompt_ids
from tunelab.models.adapters import AdapterNotShared, SharedBase, adapters_per_token, why_not_shared
from tunelab.models.device_memory import parse_memory
from tunelab.models.generate import load_for_generation
from tunelab.models.serving import ContinuousGenerator, Sampling, serving_size
from tests.conftest import build_tiny_model

# Three kinds a fine-tune can be: plain LoRA, DoRA, and rank-stabilised LoRA, of different ranks.
KINDS = [dict(r=4, lora_alpha=8), dict(r=2, lora_alpha=4, use_dora=True), dict(r=8, lora_alpha=8, use_rslora=True),
         dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, support_conversations):
    # Small initial weights: replies depend on the whole prompt, so different adapters give different ones.
    corpus = [m["content"] for c in support_conversations for m in c["messages"]]
    return build_tiny_model(tmp_path_factory.mktemp("adapter-base"), corpus, initializer_range=0.02)


def _base(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapter_dirs(model_dir, tmp_path_factory):
    """PEFT adapters with every weight random (a trained adapter's shape; a fresh one's B is zero)."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapters")
    made = []
    for k, kind in enumerate(KINDS):
        torch.manual_seed(k)
        settings = dict(target_modules="all-linear", init_lora_weights=False) | kind
        model = get_peft_model(_base(model_dir), LoraConfig(**settings))
        if kind.get("use_dora"):  # a trained magnitude differs from the weight's norm
            for name, parameter in model.named_parameters():
                if "magnitude" in name:
                    parameter.data *= 1 + 0.3 * torch.rand_like(parameter)
        model.save_pretrained(folder / f"adapter-{k}")
        made.append(folder / f"adapter-{k}")
    return made


def test_each_token_gets_its_own_adapter_as_peft_computes_it(model_dir, adapter_dirs):
    from peft import PeftModel

    ids = torch.randint(5, 500, (len(adapter_dirs) + 1, 12), generator=torch.Generator().manual_seed(0))
    model = _base(model_dir)
    shared = SharedBase(model)
    slots = [shared.attach(path) for path in adapter_dirs]
    width = ids.shape[1]
    rows = {slot: torch.arange(k * width, (k + 1) * width) for k, slot in enumerate(slots)}  # the last row: base
    with torch.no_grad(), adapters_per_token(rows):
        mixed = model(ids).logits
    with torch.no_grad():
        for k, path in enumerate(adapter_dirs):
            alone = PeftModel.from_pretrained(_base(model_dir), path).eval()(ids[k:k + 1]).logits[0]
            assert torch.allclose(mixed[k], alone, atol=1e-5, rtol=1e-4), (k, (mixed[k] - alone).abs().max())
        plain = _base(model_dir)(ids[-1:]).logits[0]
        assert torch.equal(mixed[-1], plain)  # no adapter: the base's own numbers, to the bit
        assert not torch.allclose(mixed[0], plain, atol=1e-3)

        shared.detach(slots[0])  # forgotten: its tokens now get the base alone
        with adapters_per_token({slots[0]: torch.arange(width)}):
            assert torch.equal(model(ids[:1]).logits[0], _base(model_dir)(ids[:1]).logits[0])


def test_an_adapter_per_token_layers_cannot_apply_is_named_and_refused(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_base(model_dir), LoraConfig(target_modules=["q_proj"], modules_to_save=["norm"]))
    model.save_pretrained(tmp_path / "with-head")
    assert why_not_shared(tmp_path / "with-head") == "it uses modules_to_save, which per-token adapters do not apply"
    assert "adapter_config.json cannot be read" in why_not_shared(tmp_path / "nothing")
    with pytest.raises(AdapterNotShared, match="modules_to_save"):
        SharedBase(_base(model_dir)).attach(tmp_path / "with-head")


def test_a_mixed_batch_gives_each_adapter_the_replies_it_gives_alone(model_dir, adapter_dirs, support_conversations,
                                                                    monkeypatch):
    from peft import PeftModel

    monkeypatch.setenv("TUNELAB_MEMORY", "12MB")  # the cache is sized from this budget
    loaded = load_for_generation(str(model_dir), device="cpu", dtype=torch.float32)  # fp32: exact comparisons
    generator = ContinuousGenerator(loaded)
    slots = [generator.attach(path) for path in adapter_dirs]
    prompts = [render_prompt_ids(loaded.tokenizer, split_prompt_and_reply(c)[0]) for c in support_conversations[:3]]
    # Every adapter and the base, on each prompt: 15 requests.
    requests = [(prompt, slot) for prompt in prompts for slot in [*slots, None]]

    async def reply(prompt, slot):
        last = []
        async for tokens in generator.tokens(prompt, 10, Sampling(temperature=0), adapter=slot):
            last = tokens
        return last

    async def together():
        return await asyncio.gather(*(reply(prompt, slot) for prompt, slot in requests))

    try:
        alone = [asyncio.run(reply(prompt, slot)) for prompt, slot in requests]
        assert generator.mixed_steps == 0
        mixed = asyncio.run(together())
        assert generator.mixed_steps > 0  # several adapters' tokens were computed in one step
        assert mixed == alone
        assert len({tuple(tokens) for tokens in alone[:5]}) >= 4  # the adapters do change the replies
        size = generator.sizes["greedy"]
        assert size == serving_size(loaded.model.config, torch.float32, "cpu", parse_memory("12MB"))
        assert size.kv_cache_tokens == 12 * 10**6 // 4 // size.kv_bytes_per_token // 64 * 64
    finally:
        generator.close()

    # And each is the reply PEFT's own model gives with that adapter (transformers' generate, greedy).
    with torch.no_grad():
        for k, path in enumerate(adapter_dirs):
            peft_model = PeftModel.from_pretrained(_base(model_dir), path).eval()
            prompt = prompts[0]
            out = peft_model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                      eos_token_id=generator.stop_ids, pad_token_id=loaded.tokenizer.pad_token_id)
            expected = out[0, len(prompt):].tolist()
            assert alone[k] == expected, k


def test_the_cache_and_step_are_sized_from_the_memory_free():
    from transformers import LlamaConfig

    llama_8b = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, vocab_size=128256)
    roomy = serving_size(llama_8b, torch.bfloat16, "cuda", parse_memory("80GB") - parse_memory("16GB"))
    tight = serving_size(llama_8b, torch.bfloat16, "cuda", parse_memory("24GB") - parse_memory("16GB"))
    assert roomy.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # a key and a value per layer: 128 KiB
    assert roomy.kv_cache_tokens == 64 * 10**9 // 4 // 131072 // 64 * 64 == 122048
    assert tight.kv_cache_tokens == 8 * 10**9 // 4 // 131072 // 64 * 64 == 15232
    assert roomy.batch_tokens == 2048 and tight.batch_tokens < 2048
    on_cpu = serving_size(llama_8b, torch.bfloat16, "cpu", parse_memory("64GB"))
    assert (on_cpu.kv_cache_tokens, on_cpu.batch_tokens) == (16384, 256)  # what a CPU's compute can use


def test_a_closed_generator_frees_its_model_without_the_cycle_collector(model_dir, adapter_dirs):
    import gc
    import time
    import weakref

    loaded = load_for_generation(str(model_dir), device="cpu", dtype=torch.float32)
    generator = ContinuousGenerator(loaded)
    slot = generator.attach(adapter_dirs[0])

    async def reply():
        async for _tokens in generator.tokens([5, 6, 7], 3, Sampling(temperature=0), adapter=slot):
            pass

    asyncio.run(reply())
    model = weakref.ref(loaded.model)
    gc.disable()  # only reference counts may free it: the forward hook must not tie model and generator in a cycle
    try:
        generator.close()
        del generator, loaded
        deadline = time.monotonic() + 10  # the manager's thread lets go of it as it stops
        while model() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert model() is None
    finally:
        gc.enable()
