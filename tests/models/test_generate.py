"""Batched generation (`generate_replies`): the same greedy replies as transformers' `generate` run on one
prompt at a time, rows that finish leaving the batch without changing the others, and repeatable sampling."""

from __future__ import annotations

import pytest
import torch

from tunelab.conversation.reader import split_prompt_and_reply
from tunelab.conversation.render import render_prompt_ids
from tunelab.conversation.templates import stop_token_ids
from tunelab.models import generate as generation
from tunelab.models.generate import finished_reply, generate_replies, load_for_generation
from tests.conftest import build_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, support_conversations):
    # Small initial weights: the untrained model's replies depend on the whole prompt, not just its last
    # token. The sliding window (64) is shorter than most prompts, so sliding-window cache layers are used.
    corpus = [m["content"] for c in support_conversations for m in c["messages"]]
    return build_tiny_model(tmp_path_factory.mktemp("generation-model"), corpus, initializer_range=0.02)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_for_generation(str(model_dir), device="cpu", dtype=torch.float32)  # fp32: bit-exact comparisons


@pytest.fixture(scope="module")
def prompts(support_conversations):
    # Prompts of many lengths (single- and multi-turn), so rows are padded differently within a group.
    return [split_prompt_and_reply(c)[0] for c in support_conversations[:24]]


@torch.no_grad()
def _one_at_a_time(loaded, prompts, max_new_tokens):
    stop_ids = stop_token_ids(loaded.tokenizer, loaded.model.generation_config)
    replies = []
    for messages in prompts:
        ids = render_prompt_ids(loaded.tokenizer, messages)
        output = loaded.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                       max_new_tokens=max_new_tokens, eos_token_id=stop_ids, do_sample=False,
                                       pad_token_id=loaded.tokenizer.pad_token_id)
        replies.append(finished_reply(loaded.tokenizer, output[0, len(ids):].tolist(), stop_ids, len(ids)))
    return replies


def test_greedy_batched_replies_equal_generate_one_prompt_at_a_time(loaded, prompts):
    batched = generate_replies(loaded, prompts, max_new_tokens=12)
    single = _one_at_a_time(loaded, prompts, 12)
    assert len({r.text for r in single}) > len(prompts) // 2  # the replies depend on their prompts
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in single]


def test_prefill_in_chunks_gives_the_same_replies(loaded, prompts, monkeypatch):
    whole = generate_replies(loaded, prompts, max_new_tokens=8)
    monkeypatch.setattr(generation, "PREFILL_TOKEN_BUDGET", 200)  # a few rows per prefill pass, caches joined
    chunked = generate_replies(loaded, prompts, max_new_tokens=8)
    assert [r.text for r in chunked] == [r.text for r in whole]


def test_a_finished_row_leaves_the_batch_and_the_others_are_unchanged(loaded, prompts):
    tokenizer = loaded.tokenizer
    rows = [render_prompt_ids(tokenizer, m) for m in prompts]
    sampler = generation._Sampler(0.0, 1.0, None, "cpu")
    no_stop = dict(_run(loaded, rows, [], sampler, 10))
    # A stop token that some rows write and others never do: those rows end early, the rest go on.
    rows_writing = {t: {i for i, tokens in no_stop.items() if t in tokens} for tokens in no_stop.values() for t in tokens}
    stopper = max((t for t, writers in rows_writing.items() if len(writers) < len(rows)), key=lambda t: len(rows_writing[t]))
    stopped = _run(loaded, rows, [stopper], sampler, 10)
    assert 0 < len(rows_writing[stopper]) < len(rows)
    lengths = [len(tokens) for _, tokens in stopped]
    assert lengths == sorted(lengths) and lengths[0] < 10  # yielded as they finished, some before the limit
    for index, tokens in stopped:
        expected = no_stop[index]
        cut = expected.index(stopper) + 1 if stopper in expected else len(expected)
        assert tokens == expected[:cut]


def _run(loaded, rows, stop_ids, sampler, max_new_tokens):
    return list(generation._decode_group(loaded.model, rows, list(range(len(rows))), stop_ids,
                                         loaded.tokenizer.pad_token_id, max_new_tokens, sampler, "cpu"))


def test_sampling_is_repeatable_with_a_seed(loaded, prompts):
    first = generate_replies(loaded, prompts, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    again = generate_replies(loaded, prompts, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    other = generate_replies(loaded, prompts, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=8)
    greedy = generate_replies(loaded, prompts, max_new_tokens=10)
    assert [r.text for r in first] == [r.text for r in again]
    assert [r.text for r in first] != [r.text for r in other]
    assert [r.text for r in first] != [r.text for r in greedy]


def test_bf16_generation_runs_on_any_cpu_and_repeats_itself(model_dir, prompts):
    """The bf16 path (eval's default on a CPU with bf16 units, emulated elsewhere) forced on this CPU: it
    runs, stops at the limit, and gives the same replies twice (a batch's rounding can differ from a
    single prompt's, so it is not compared with the fp32 replies)."""
    loaded = load_for_generation(str(model_dir), device="cpu", dtype=torch.bfloat16)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    first = generate_replies(loaded, prompts[:6], max_new_tokens=6)
    again = generate_replies(loaded, prompts[:6], max_new_tokens=6)
    assert [r.text for r in first] == [r.text for r in again]
    assert all(0 < r.completion_tokens <= 6 for r in first)
