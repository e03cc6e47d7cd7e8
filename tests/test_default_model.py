"""The real embedded default (Gemma 3 270M from PyPI), for a few steps: resolution, the template's end of
turn, training, and generation from the run directory. Uses the shared conversion cache (~70 s the first
time on a machine, seconds after)."""

import json

import pytest

from tunelab.conversation.render import IGNORE_INDEX, render_conversation
from tunelab.core.settings import TrainConfig
from tunelab.models.generate import generate_replies, load_for_generation
from tunelab.models.resolve import load_tokenizer, resolve_model
from tunelab.train.local import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    return resolve_model("default")


def test_default_model_renders_gemma_turns_and_trains_the_end_of_turn(default_model, support_conversations):
    tokenizer = load_tokenizer(default_model.path)
    example = render_conversation(tokenizer, support_conversations[0]["messages"])
    assert example.input_ids[0] == tokenizer.bos_token_id
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert end_of_turn in trained  # the model is taught to stop
    assert tokenizer.decode(trained).endswith("— Robin, Brightlane Support<end_of_turn>\n")


def test_a_few_steps_on_the_default_model_then_generate(tmp_path, default_model, support_conversations,
                                                        write_jsonl):
    data = write_jsonl("train.jsonl", support_conversations[:8])
    run = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), n_epochs=1, batch_size=4,
                            max_length=256))
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 steps
    first_loss = float(rows[1].split(",")[1])
    assert 0.5 < first_loss < 6  # a pretrained model's loss on English, not a random one's ln(262144)=12.5
    job = json.loads((run / "job.json").read_text())
    assert job["status"] == "succeeded" and job["model"] == "gemma-3-270m"

    loaded = load_for_generation(str(run))
    assert loaded.has_adapter
    reply = generate_replies(loaded, [support_conversations[9]["messages"][:2]], max_new_tokens=8)[0]
    assert reply.text and reply.completion_tokens <= 8


def test_token_counts_on_the_default_tokenizer_equal_rendering(default_model, support_conversations):
    """Gemma's 262k vocabulary qualifies for the chunk cache; its counts must equal the training render."""
    from tunelab.data.tokens import Counts, LocalTokenCounter, splits_at_word_starts

    tokenizer = load_tokenizer(default_model.path)
    assert splits_at_word_starts(tokenizer)
    conversations = [c["messages"] for c in support_conversations] + [
        [{"role": "user", "content": "two  spaces, <b> </b>, ünïcödé 😀 "}, {"role": "assistant", "content": "Fine."}]]
    expected = []
    for messages in conversations:
        example = render_conversation(tokenizer, messages)
        expected.append(Counts(len(example.input_ids), example.trained_tokens))
    assert LocalTokenCounter(tokenizer, "gemma").count_batch(conversations) == expected
