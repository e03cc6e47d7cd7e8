"""`tunelab export` on a tiny run trained here: every format reloads and answers as the run does, or is not
kept. The tiny model has Gemma 3's head size (256) so its attention scale is one GGUF can carry, and small
initial weights so each greedy token depends on the whole context."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import train_tiny_run
from tunelab.export.ollama import GEMMA_OLLAMA_TEMPLATE
from tunelab.export.run import ExportConfig, ExportFailed, export, llama_cpp_installed
from tunelab.export.verify import Comparison, Reference, compare

pytestmark = pytest.mark.slow  # trains a run, then reloads each export and generates with it


@pytest.fixture(scope="module")
def run(tmp_path_factory, support_conversations):
    folder = tmp_path_factory.mktemp("export")
    (folder / "held_out.jsonl").write_text("".join(json.dumps(c) + "\n" for c in support_conversations[40:60]))
    return train_tiny_run(folder, support_conversations, n_epochs=3, learning_rate_multiplier=25, seed=3)


def exported(run, tmp_path, **settings):
    return export(ExportConfig(str(run), prompts=str(run.parent / "held_out.jsonl"), out=str(tmp_path / "out"),
                               **settings))


def test_merged_fp32_answers_as_the_adapter_on_20_held_out_prompts_and_loads_without_tunelab(run, tmp_path):
    result = exported(run, tmp_path, format="merged", dtype="f32", verify_prompts=20)
    [check] = result.checks
    assert (check.prompts, check.greedy_identical, check.top_token_agreed) == (20, 20, 20)
    assert check.max_logit_diff < 1e-3 and check.passed
    names = {p.name for p in result.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)  # safetensors only
    # Plain transformers, no tunelab: the template renders, and generate stops at the end-of-turn token.
    script = (
        "import sys, json, transformers as t\n"
        "m = t.AutoModelForCausalLM.from_pretrained(sys.argv[1]); k = t.AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = k.apply_chat_template([{'role': 'user', 'content': 'Where is my order?'}], add_generation_prompt=True,"
        " return_tensors='pt', return_dict=True)\n"
        "print(json.dumps({'eos': m.generation_config.eos_token_id, 'end_of_turn': k.convert_tokens_to_ids('<end_of_turn>'),"
        " 'prompt': k.decode(ids['input_ids'][0])}))\n")
    shown = subprocess.run([sys.executable, "-c", script, str(result.path)], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "tunelab" not in shown.stderr, shown.stderr
    loaded = json.loads(shown.stdout.splitlines()[-1])
    assert loaded["eos"][0] == loaded["end_of_turn"]  # the end of a turn is the first stop
    assert loaded["prompt"].endswith("<start_of_turn>user\nWhere is my order?<end_of_turn>\n<start_of_turn>model\n")


def test_the_adapter_matters_so_the_comparison_can_fail(run, tmp_path):
    """Greedy answers of the base alone differ from the run's: an export that lost the adapter would fail."""
    from tunelab.models.generate import load_for_generation
    from tunelab.models.resolve import load_model

    merged = exported(run, tmp_path, format="merged", dtype="f32", verify_prompts=5)
    loaded = load_for_generation(str(run), device="cpu", dtype=torch.float32)
    base = load_model(str(run.parent / "model"))
    with torch.no_grad():
        ids = torch.tensor([loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Where is my order?"}], add_generation_prompt=True, return_dict=True)["input_ids"]])
        tuned = load_model(str(merged.path))(ids).logits[0, -1]
        assert float((tuned - base(ids).logits[0, -1]).abs().max()) > 0.1


def test_merged_bf16_is_within_its_tolerance(run, tmp_path):
    result = exported(run, tmp_path, format="merged", dtype="bf16")
    [check] = result.checks
    assert check.passed and check.max_logit_diff <= check.tolerance
    assert json.loads((result.path / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("number_format", ["f16", "q8_0"])
def test_gguf_reloads_through_transformers_with_the_chat_template_and_end_of_turn(run, tmp_path, number_format):
    import gguf

    result = exported(run, tmp_path, format="gguf", dtype=number_format)
    transformers_check = next(c for c in result.checks if "transformers" in c.candidate)
    assert transformers_check.passed and transformers_check.prompts == 10
    if number_format == "f16":
        assert transformers_check.greedy_identical == 10
    fields = gguf.GGUFReader(str(result.path)).fields
    template = (run / "tokenizer" / "chat_template.jinja").read_text()
    assert fields["tokenizer.chat_template"].contents() == template
    end_of_turn = fields["tokenizer.ggml.tokens"].contents()[fields["tokenizer.ggml.eos_token_id"].contents()]
    assert end_of_turn == "<end_of_turn>"
    assert fields["general.architecture"].contents() == "gemma3"


def test_gguf_in_llama_cpp_answers_as_the_run(run, tmp_path):
    if not llama_cpp_installed():
        pytest.skip("llama.cpp is not installed: `pip install -e '.[llama]'` (builds llama-cpp-python from source, "
                    "about 10 min on two cores) runs this check; the transformers checks above ran without it")
    result = exported(run, tmp_path, format="gguf", dtype="f16")
    check = next(c for c in result.checks if "llama.cpp" in c.candidate)
    assert check.passed and check.greedy_identical == check.prompts == 10


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_gguf_of_llama_and_qwen2_layouts_answers_as_the_run(architecture, tmp_path, support_conversations):
    """Llama's q/k are permuted for llama.cpp's rotary layout, Qwen2's biases kept: transformers' loader undoes
    the one and llama.cpp reads both; each must answer as the run does."""
    (tmp_path / "run").mkdir()
    other = train_tiny_run(tmp_path / "run", support_conversations, architecture=architecture, n_epochs=2,
                           learning_rate_multiplier=25, seed=3)
    result = export(ExportConfig(str(other), "gguf", "f16", str(tmp_path / "out.gguf"), str(tmp_path / "run" / "train.jsonl"), 5))
    import gguf

    assert gguf.GGUFReader(str(result.path)).fields["general.architecture"].contents() == architecture
    assert all(check.passed for check in result.checks) and len(result.checks) == 1 + llama_cpp_installed()


def test_ollama_export_is_the_gguf_and_a_modelfile_with_the_training_template(run, tmp_path):
    result = exported(run, tmp_path, format="ollama", dtype="q8_0")
    assert {p.name for p in result.path.iterdir()} == {"model.gguf", "Modelfile"}
    modelfile = (result.path / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<end_of_turn>"' in modelfile
    assert f'TEMPLATE """{GEMMA_OLLAMA_TEMPLATE}"""' in modelfile and "SYSTEM" in modelfile  # one shared system prompt
    assert result.next_step.startswith(f"cd {result.path} && ollama create ")


def test_adapter_export_loads_on_its_base_with_peft(run, tmp_path):
    result = exported(run, tmp_path, format="adapter")
    assert result.checks[0].greedy_identical == 10
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run.parent / "model")
    assert (result.path / "chat_template.jinja").is_file() and "vllm serve" in result.next_step


def test_an_existing_export_is_never_overwritten_and_errors_leave_nothing(run, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportFailed, match="exists; give another --out, or --force"):
        exported(run, tmp_path, format="merged")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    cli = subprocess.run([sys.executable, "-m", "tunelab.cli", "export", str(tmp_path), "--format", "gguf"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "not a finished run directory" in cli.stderr and "Traceback" not in cli.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial export left behind


def test_a_comparison_fails_beyond_its_tolerance_or_where_a_continuation_parts_away_from_a_near_tie():
    # The reference's continuation 7, 8, 9: its top two tokens were 5.0, 0.01 and 2.0 apart at each step.
    reference = Reference([[1, 2]], [torch.tensor([0.0, 1.0, 0.5])], [[7, 8, 9]], [9], margins=[[5.0, 0.01, 2.0]])
    same = compare(reference, "copy", "f16", [torch.tensor([0.0, 1.0, 0.5])], [[7, 8, 9]])
    drifted = compare(reference, "drift", "f16", [torch.tensor([0.0, 1.0, 0.9])], [[7, 8, 9]])
    at_a_tie = compare(reference, "tie", "f16", [torch.tensor([0.0, 1.0, 0.5])], [[7, 3, 9]])
    elsewhere = compare(reference, "parted", "f16", [torch.tensor([0.0, 1.0, 0.5])], [[7, 8, 4]])
    assert same.passed and not drifted.passed
    assert at_a_tie.passed and at_a_tie.partings == [(1, 0.01)] and "(a near-tie)" in at_a_tie.summary()
    assert not elsewhere.passed and elsewhere.unexplained_partings == [(2, 2.0)] and "FAILED" in elsewhere.summary()
    assert isinstance(same, Comparison) and same.as_dict()["passed"]
