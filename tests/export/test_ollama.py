"""The Ollama Modelfile's TEMPLATE, run through Go's text/template as Ollama runs it, renders exactly the
prompt the training renderer produces (less the BOS token, which Ollama's tokenizer adds)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tunelab.conversation.render import render_text
from tunelab.export.ollama import GEMMA_OLLAMA_TEMPLATE, modelfile

RENDERER = Path(__file__).with_name("render_template.go")
SYSTEM = "You are the support assistant for Brightlane Home."
CONVERSATIONS = {
    "one question": [{"role": "user", "content": "Where is my order?"}],
    "system and question": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is my order?"}],
    "multi-turn": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is my order?"},
                   {"role": "assistant", "content": "It left our warehouse on Monday.\n\nAnything else?"},
                   {"role": "user", "content": "Can I change the address?"}],
    "no system, two turns": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                             {"role": "user", "content": "Return policy?"}],
    "system before a reply": [{"role": "system", "content": SYSTEM}, {"role": "assistant", "content": "Welcome back."},
                              {"role": "user", "content": "Thanks"}],
}


def go_render(template: str, messages: list[dict], tmp_path: Path) -> str:
    go = shutil.which("go")
    assert go, "Go is needed to render the template as Ollama does: `apt-get install golang-go` (make setup does)"
    template_file = tmp_path / "template.txt"
    template_file.write_text(template, encoding="utf-8")
    done = subprocess.run([go, "run", str(RENDERER), str(template_file)], input=json.dumps(messages),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_modelfile_template_renders_the_training_prompt(name, tiny_tokenizer, tmp_path):
    messages = CONVERSATIONS[name]
    trained = render_text(tiny_tokenizer, messages, add_generation_prompt=True)
    assert trained.startswith("<bos>")
    assert go_render(GEMMA_OLLAMA_TEMPLATE, messages, tmp_path) == trained[len("<bos>"):]


def test_modelfile_names_the_gguf_the_stop_token_and_the_shared_system_prompt(tiny_tokenizer):
    text = modelfile("model.gguf", tiny_tokenizer.chat_template, ["<end_of_turn>"], SYSTEM)
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf" and 'PARAMETER stop "<end_of_turn>"' in lines
    assert f'SYSTEM """{SYSTEM}"""' in lines and f'TEMPLATE """{GEMMA_OLLAMA_TEMPLATE}"""' in text
    # A chat template with no Go version written for it: no TEMPLATE (Ollama matches the GGUF's own).
    assert "TEMPLATE" not in modelfile("model.gguf", "{{ messages }}", ["<|im_end|>"])
