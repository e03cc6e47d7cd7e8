"""The preference loss on the tests' tiny model with a LoRA adapter: the replies' log-probabilities through the
fused head equal a plain log-softmax of the model's logits; the DPO loss and its gradients equal the same
formula computed the plain way; it starts at ln 2 and leaves it at once when the reference is the adapter
switched off, and stays at ln 2 when the reference is (wrongly) the policy itself."""

import math

import pytest
import torch

from tunelab.conversation.render import IGNORE_INDEX, render_conversation
from tunelab.train.batches import collate
from tunelab.train.preference import preference_loss, sequence_log_probs


@pytest.fixture()
def policy(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                            task_type="CAUSAL_LM"))


@pytest.fixture()
def pairs(tiny_tokenizer, support_conversations):
    """Four pairs: the support reply preferred, a reply that stops after its greeting not."""
    chosen, rejected = [], []
    for conversation in support_conversations[:4]:
        messages = conversation["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt, reply = messages[:last], messages[last]["content"]
        chosen.append(render_conversation(tiny_tokenizer, [*prompt, {"role": "assistant", "content": reply}]))
        rejected.append(render_conversation(tiny_tokenizer, [*prompt, {"role": "assistant", "content": reply[:12]}]))
    return collate(chosen + rejected, tiny_tokenizer.pad_token_id, "cpu")  # batch: the chosen, then the rejected


def plain_log_probs(model, input_ids, attention_mask, labels):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (picked.double() * trained).sum(dim=1), trained.sum(dim=1)


def dpo(model, batch, log_probs, beta=0.1, reference_is_policy=False):
    policy_sums, counts = log_probs(model, *batch)
    with torch.no_grad():
        if reference_is_policy:
            reference_sums, _ = log_probs(model, *batch)
        else:
            with model.disable_adapter():
                reference_sums, _ = log_probs(model, *batch)
    half = len(policy_sums) // 2
    return preference_loss(policy_sums[:half], policy_sums[half:], reference_sums[:half], reference_sums[half:], beta,
                           chosen_tokens=counts[:half], rejected_tokens=counts[half:])


def test_log_probs_through_the_fused_head_are_the_plain_ones(policy, pairs):
    with torch.no_grad():
        fused, fused_counts = sequence_log_probs(policy, *pairs)
        plain, plain_counts = plain_log_probs(policy, *pairs)
    assert torch.equal(fused_counts, plain_counts)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-3)  # sums of some 250 fp32 log-probabilities, ~ -3,000


def test_the_dpo_loss_and_its_gradients_are_the_plain_formula_s(policy, pairs):
    with torch.no_grad():  # an adapter that has moved: B is zero at initialisation, so give it something
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    gradients = {}
    for how, log_probs in (("fused", sequence_log_probs), ("plain", plain_log_probs)):
        policy.zero_grad()
        result = dpo(policy, pairs, log_probs)
        result.loss.backward()
        gradients[how] = (result, {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad})
    (fused, fused_grads), (plain, plain_grads) = gradients["fused"], gradients["plain"]
    assert abs(float(fused.loss.detach()) - math.log(2)) > 1e-3  # the adapter moved the policy off the reference
    # Each token's log-probability is an fp32 figure either way (the fused head's sums of exponentials in
    # another order), the sequences' sums in fp64: the loss to 1e-6, the rewards (β = 0.1) to 1e-5.
    torch.testing.assert_close(fused.loss, plain.loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(fused.rewards_chosen, plain.rewards_chosen, rtol=0, atol=1e-5)
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("reference_is_policy", [False, True], ids=["adapter-off-reference", "policy-as-reference"])
def test_the_loss_leaves_ln2_only_when_the_reference_is_right(policy, pairs, reference_is_policy):
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        result = dpo(policy, pairs, sequence_log_probs, reference_is_policy=reference_is_policy)
        result.loss.backward()
        optimizer.step()
        losses.append(float(result.loss.detach()))
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # a fresh adapter is the reference
    if reference_is_policy:  # the log-ratios are zero whatever the weights: nothing to learn (TRL #1961)
        assert all(loss == pytest.approx(math.log(2), abs=1e-6) for loss in losses)
    else:
        assert losses[-1] < math.log(2) - 0.01 and result.metrics()["reward_accuracy"] == 1.0


def test_the_reference_is_computed_once_from_the_model_as_it_starts(policy, tiny_tokenizer, support_conversations,
                                                                     tmp_path):
    """Read from a preference file, rendered, and scored once before training: for a fresh adapter that is
    the base model (the adapter switched off), whatever the batch size; for an adapter a run continues from
    (B moved), the policy as it starts — so the first step's loss is ln 2 either way."""
    import json

    from tunelab.conversation.reader import read_numbered_pairs
    from tunelab.train.preference import reference_log_probs, render_pairs

    path = tmp_path / "pairs.jsonl"
    lines = []
    for conversation in support_conversations[:6]:
        messages = conversation["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        lines.append({"input": {"messages": messages[:last]}, "preferred_output": [messages[last]],
                      "non_preferred_output": [{"role": "assistant", "content": messages[last]["content"][:20]}]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    pairs = render_pairs(tiny_tokenizer, read_numbered_pairs(path), path)
    assert len(pairs) == 6 and all(p.preferred.input_ids[:10] == p.non_preferred.input_ids[:10] for p in pairs)
    pad = tiny_tokenizer.pad_token_id

    fresh = reference_log_probs(policy, pairs, pad, "cpu", batch_size=4)
    with torch.no_grad(), policy.disable_adapter():
        base = torch.stack([sequence_log_probs(policy, *collate([p.preferred, p.non_preferred], pad, "cpu"))[0]
                            for p in pairs])
    # Batched otherwise, fp32 matrix products round otherwise: sums of ~2,000 nats agree to 1e-3.
    torch.testing.assert_close(fresh, base, rtol=0, atol=1e-3)
    torch.testing.assert_close(reference_log_probs(policy, pairs, pad, "cpu", batch_size=1), fresh, rtol=0, atol=1e-3)

    with torch.no_grad():  # a run that continues from a trained adapter
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    continued = reference_log_probs(policy, pairs, pad, "cpu")
    assert float((continued - fresh).abs().max()) > 1e-2  # not the base
    policy_now, _ = sequence_log_probs(policy, *collate([e for p in pairs for e in (p.preferred, p.non_preferred)], pad, "cpu"))
    first = preference_loss(policy_now[0::2], policy_now[1::2], continued[:, 0], continued[:, 1], beta=0.1)
    assert float(first.loss.detach()) == pytest.approx(math.log(2), abs=1e-6)


def test_the_merged_lora_forward_scores_replies_as_peft_s_own(policy, pairs):
    """Training goes through merged LoRA weights (train/merged_lora.py) while the reference is computed without
    gradients, through PEFT's own forward: both must score the same replies alike, or the first step's loss
    would not be ln 2."""
    from tunelab.train.merged_lora import train_through_merged_weights

    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    assert train_through_merged_weights(policy) > 0
    policy.train()
    merged, _ = sequence_log_probs(policy, *pairs)  # gradients on: the merged path
    with torch.no_grad():
        peft, _ = sequence_log_probs(policy, *pairs)
    torch.testing.assert_close(merged.detach(), peft, rtol=0, atol=1e-3)  # sums of ~2,000 nats in fp32 products
    half = len(peft) // 2
    first = preference_loss(merged[:half], merged[half:], peft[:half], peft[half:], beta=0.1)
    assert float(first.loss.detach()) == pytest.approx(math.log(2), abs=1e-5)


def test_simpo_is_the_average_log_probability_margin_and_ignores_any_reference():
    """SimPO's loss by hand: −log σ(β · (sum_c / n_c − sum_r / n_r) − γ); the reference changes nothing."""
    chosen, rejected = torch.tensor([-12.0, -30.0], dtype=torch.float64), torch.tensor([-20.0, -9.0], dtype=torch.float64)
    counts_c, counts_r = torch.tensor([4, 10]), torch.tensor([5, 3])
    result = preference_loss(chosen, rejected, torch.tensor([5.0, -1.0]), torch.tensor([-7.0, 2.0]), beta=2.0,
                             loss_type="simpo", chosen_tokens=counts_c, rejected_tokens=counts_r, gamma=0.5)
    for i, (c, r, n_c, n_r) in enumerate([(-12.0, -20.0, 4, 5), (-30.0, -9.0, 10, 3)]):
        logit = 2.0 * (c / n_c - r / n_r) - 0.5
        assert float(result.losses[i]) == pytest.approx(math.log1p(math.exp(-logit)), abs=1e-12)
        assert float(result.rewards_chosen[i]) == pytest.approx(2.0 * c / n_c)
    assert result.metrics()["reward_accuracy"] == 0.5  # the first pair prefers the chosen, the second not

