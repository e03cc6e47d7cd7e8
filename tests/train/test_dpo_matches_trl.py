"""tunelab's DPO loss and gradients equal TRL's `DPOTrainer` on the tests' tiny model and a fixed set of pairs:
the same tokens and scored positions (each output after its prompt, the end-of-turn marker included, earlier
assistant turns of the prompt not scored), the same β, the same reference (the adapter as it was before
training: TRL keeps a copy of a PEFT model's initial adapter as `ref`; tunelab switches a fresh adapter off).

Tolerance: the loss to 1e-5 and each LoRA gradient to 1e-4 of its largest entry — TRL sums a sequence's
log-probabilities in fp32, tunelab in fp64, over sequences of some 3,000 nats."""

import tempfile

import pytest
import torch

from tunelab.conversation.preference import read_pair
from tunelab.conversation.render import render_conversation
from tunelab.train.batches import collate
from tunelab.train.preference import preference_loss, sequence_log_probs

pytestmark = pytest.mark.slow  # TRL and datasets take seconds to import

BETA = 0.1


@pytest.fixture()
def pairs(support_conversations):
    """Four pairs, the first with an earlier assistant turn in its prompt: the reply preferred, its first
    twelve characters not."""
    chosen = [support_conversations[0], *support_conversations[1:4]]
    lines = []
    for conversation in chosen:
        messages = conversation["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        lines.append({"input": {"messages": messages[:last]}, "preferred_output": [messages[last]],
                      "non_preferred_output": [{"role": "assistant", "content": messages[last]["content"][:12]}]})
    assert sum(m["role"] == "assistant" for m in lines[0]["input"]["messages"]) >= 1
    return lines


def test_loss_and_gradients_equal_trl_dpo_trainer(tiny_model_dir, tiny_tokenizer, pairs):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    rows = [{"prompt": p["input"]["messages"], "chosen": p["preferred_output"], "rejected": p["non_preferred_output"]}
            for p in pairs]
    with tempfile.TemporaryDirectory() as out:
        trainer = DPOTrainer(model=model, train_dataset=Dataset.from_list(rows), processing_class=tiny_tokenizer,
                             args=DPOConfig(output_dir=out, beta=BETA, per_device_train_batch_size=4, max_length=None,
                                            report_to=[], use_cpu=True, gradient_checkpointing=False, bf16=False))
        theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])  # in order
        assert "ref" in model.peft_config  # TRL's reference: the adapter as it was

        # The same tokens, and the same positions scored, as tunelab renders the pairs.
        read = [read_pair(p) for p in pairs]
        rendered = [render_conversation(tiny_tokenizer, pair.conversation(preferred)["messages"])
                    for preferred in (True, False) for pair in read]
        for row, example in enumerate(rendered):
            real = theirs["attention_mask"][row].bool()
            assert theirs["input_ids"][row][real].tolist() == example.input_ids
            assert theirs["completion_mask"][row][real].tolist() == [int(label != -100) for label in example.labels]

        with torch.no_grad():  # the policy moved off the reference (a fresh adapter's B is zero)
            for name, parameter in model.named_parameters():
                if "lora_B.default" in name:
                    parameter.normal_(0, 0.05)
        model.zero_grad()
        trl_loss = trainer.compute_loss(trainer.model, theirs)
        trl_loss.backward()
        trl_gradients = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    model.zero_grad()
    batch = collate(rendered, tiny_tokenizer.pad_token_id, "cpu")
    policy, _ = sequence_log_probs(model, *batch)
    with torch.no_grad(), model.disable_adapter():
        reference, _ = sequence_log_probs(model, *batch)
    ours = preference_loss(policy[:4], policy[4:], reference[:4], reference[4:], BETA)
    ours.loss.backward()
    assert abs(float(ours.loss.detach()) - float(trl_loss.detach())) < 1e-5
    assert abs(float(ours.loss.detach()) - 0.6931) > 1e-3  # not the loss of a policy that is its reference
    for name, gradient in trl_gradients.items():
        if ".default." not in name:
            continue
        mine = dict(model.named_parameters())[name].grad
        scale = float(gradient.abs().max())
        assert scale > 0 and float((mine - gradient).abs().max()) <= 1e-4 * scale, name
