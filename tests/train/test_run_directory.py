"""A run directory stands alone: moved elsewhere and used from another working directory, `--resume`,
`chat` and `eval` still work. Templates come with the model or with `--chat-template`, never guessed."""

import json
import os
import shutil

import pytest
import torch
import yaml

from tests.conftest import run_cli
from tunelab.core.settings import TrainConfig
from tunelab.train.local import train


def tunelab(*arguments, cwd):
    """The command in-process, from `cwd`, its output as text."""
    result = run_cli(*map(str, arguments), cwd=cwd)
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


@pytest.mark.slow
def test_a_moved_run_resumes_chats_and_evaluates_from_anywhere(tmp_path, tiny_model_dir, support_conversations):
    start = tmp_path / "project"
    (start / "data").mkdir(parents=True)
    (start / "data" / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:16]))
    (start / "data" / "test.jsonl").write_text("".join(json.dumps(c) + "\n" for c in support_conversations[16:20]))
    shutil.copytree(tiny_model_dir, start / "model")
    # Relative paths, as a user types them; the run is cancelled after its first epoch's checkpoint.
    os.chdir(start)
    config = TrainConfig(data="data/train.jsonl", model="model", out="runs/first", n_epochs=2, batch_size=4,
                         dtype="fp32", learning_rate_multiplier=25)
    train(config, should_stop=lambda step: step == 6)
    recorded = yaml.safe_load((start / "runs" / "first" / "config.yaml").read_text())
    assert recorded["data"] == str(start / "data" / "train.jsonl") and recorded["model"] == str(start / "model")

    moved = tmp_path / "archive" / "moved-run"
    moved.parent.mkdir()
    shutil.move(start / "runs" / "first", moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)

    resumed = tunelab("train", "--resume", moved, "--quiet", cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((moved / "job.json").read_text())["status"] == "succeeded"
    assert (moved / "adapter" / "adapter_model.safetensors").is_file() and not (start / "runs" / "first").exists()
    assert len((moved / "metrics.csv").read_text().splitlines()) == 1 + 8  # both epochs, in the moved directory

    chatted = tunelab("chat", moved, "Where is my order?", "--max-new-tokens", "4", cwd=elsewhere)
    assert chatted.returncode == 0 and "4-token limit" in chatted.stderr, chatted.stderr[-2000:]  # an untrained tiny model rambles
    evaluated = tunelab("eval", "--model", moved, "--data", start / "data" / "test.jsonl", "--max-new-tokens", "4",
                        "--quiet", cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (moved / "eval" / "report.html").is_file()


def test_a_model_without_a_template_trains_with_the_one_given_and_keeps_it(tmp_path, tiny_model_dir, support_conversations):
    from tunelab.conversation.templates import GEMMA_CHAT_TEMPLATE
    from tunelab.models.generate import generate_replies, load_for_generation

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((bare / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(settings))
    template = tmp_path / "gemma.jinja"
    template.write_text(GEMMA_CHAT_TEMPLATE)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:8]))
    run_dir = train(TrainConfig(data=str(data), model=str(bare), chat_template=str(template), out=str(tmp_path / "run"),
                                n_epochs=1, batch_size=4, dtype="fp32"))
    assert (run_dir / "tokenizer" / "chat_template.jinja").read_text() == GEMMA_CHAT_TEMPLATE
    loaded = load_for_generation(str(run_dir))  # no --chat-template needed: the run carries it
    reply = generate_replies(loaded, [[{"role": "user", "content": "Hi"}]], max_new_tokens=3)[0]
    assert reply.finish_reason in ("stop", "length", "tool_calls")


def test_stop_tokens_are_the_model_s_eos_ids_and_the_template_s_end_of_turn(tiny_tokenizer):
    import copy

    from transformers import GenerationConfig

    from tunelab.conversation.templates import end_of_turn_token, stop_token_ids

    chatml = copy.deepcopy(tiny_tokenizer)
    chatml.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chatml.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    im_end = chatml.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_token(chatml) == im_end
    configured = GenerationConfig(eos_token_id=[7, 9])
    assert stop_token_ids(chatml, configured) == [7, 9, im_end, chatml.eos_token_id]
    assert end_of_turn_token(tiny_tokenizer) == tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")


def test_generation_on_a_cpu_is_bf16_only_where_it_has_bf16_units(monkeypatch):
    import tunelab.models.precision as precision

    for has_bf16 in (True, False):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
        for trained_with in ("bf16", "fp16", "auto", None):
            assert precision.inference_dtype(trained_with, "cpu") == (torch.bfloat16 if has_bf16 else torch.float32)
        assert precision.inference_dtype("fp32", "cpu") == torch.float32  # trained in fp32 by request
