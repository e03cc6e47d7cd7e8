"""What tunelab reads and runs: weights from safetensors only, no code from a model's folder, pinned
dependencies — by a scan of the package's own source and by loading hostile model folders."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_tiny_model

pytestmark = pytest.mark.reliability
PACKAGE = Path(__file__).resolve().parents[2] / "tunelab"
MODEL_LOADERS = {"AutoModelForCausalLM", "AutoModel", "FastLanguageModel", "AutoModelForSeq2SeqLM"}


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_package_never_unpickles_or_trusts_remote_code_on_its_own():
    findings = []
    for source in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        where = source.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if any(name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve") for name in names):
                    findings.append(f"{where}:{node.lineno}: imports {names}")
        for node, name in calls(tree):
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            if name in ("torch.load", "numpy.load", "np.load") or name.endswith("torch.serialization.load"):
                findings.append(f"{where}:{node.lineno}: {name}(…)")
            for flag in ("trust_remote_code", "weights_only", "allow_pickle"):
                value = keywords.get(flag)
                if isinstance(value, ast.Constant) and value.value is (flag != "weights_only"):
                    findings.append(f"{where}:{node.lineno}: {flag}={value.value!r}")
            loader = name.rsplit(".", 1)
            if len(loader) == 2 and loader[1] == "from_pretrained" and loader[0] in MODEL_LOADERS:
                opted = any(k.arg is None and "loading_options" in ast.unparse(k.value) for k in node.keywords)
                if not opted and "gguf_file" not in keywords:  # a GGUF holds no code and no pickle
                    findings.append(f"{where}:{node.lineno}: {name} without **loading_options()")
            if name == "PeftModel.from_pretrained" and where.as_posix() != "tunelab/models/resolve.py":
                findings.append(f"{where}:{node.lineno}: PeftModel.from_pretrained outside load_adapter")
    assert findings == []


def test_the_scan_would_catch_each_thing_it_looks_for():
    """The scan on a file that does each forbidden thing once (so a scan that found nothing is meaningful)."""
    bad = ast.parse("import pickle\nimport torch\ntorch.load('x')\nAutoModelForCausalLM.from_pretrained('x', "
                    "trust_remote_code=True)\nPeftModel.from_pretrained(b, 'x')\n")
    names = [name for _, name in calls(bad)]
    assert {"torch.load", "AutoModelForCausalLM.from_pretrained", "PeftModel.from_pretrained"} <= set(names)
    assert any(isinstance(n, ast.Import) and n.names[0].name == "pickle" for n in ast.walk(bad))


def corpus():
    return ["Where is my order?", "It ships within 2 business days.", "Hi there, thanks for waiting."]


def load_in_child(model_dir: Path, env: dict) -> subprocess.CompletedProcess:
    code = "import sys\nfrom tunelab.models.resolve import load_model\nload_model(sys.argv[1])\nprint('loaded')"
    return subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_code_shipped_in_a_model_folder_runs_only_when_the_user_opts_in(tmp_path):
    import json

    model_dir = build_tiny_model(tmp_path / "model", corpus())
    marker = tmp_path / "remote-code-ran"
    (model_dir / "evil_modeling.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import Gemma3ForCausalLM\nclass EvilForCausalLM(Gemma3ForCausalLM):\n    pass\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil_modeling.EvilForCausalLM"}
    (model_dir / "config.json").write_text(json.dumps(config))
    modules = {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    plain = load_in_child(model_dir, modules)
    assert plain.returncode == 0 and "loaded" in plain.stdout, plain.stderr[-2000:]
    assert not marker.exists()  # the model's own class, not the folder's code
    opted_in = load_in_child(model_dir, modules | {"TUNELAB_TRUST_REMOTE_CODE": "1"})
    assert marker.read_text() == "ran", opted_in.stderr[-2000:]


def test_weights_only_in_a_pickle_are_refused_unless_the_user_opts_in(tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_model(tmp_path / "model", corpus())
    import torch

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    (model_dir / "model.safetensors").unlink()
    torch.save(model.state_dict(), model_dir / "pytorch_model.bin")  # the old pickled format, as some hub repos have
    assert list(model_dir.glob("*.bin"))
    refused = load_in_child(model_dir, {})
    assert refused.returncode == 1 and "reads safetensors only" in refused.stderr and "TUNELAB_ALLOW_PICKLE=1" in refused.stderr
    through_cli = subprocess.run([sys.executable, "-m", "tunelab.cli", "chat", str(model_dir), "--once", "hi"],
                                 capture_output=True, text=True, timeout=300)
    assert through_cli.returncode == 1 and "reads safetensors only" in through_cli.stderr
    assert "Traceback" not in through_cli.stderr
    allowed = load_in_child(model_dir, {"TUNELAB_ALLOW_PICKLE": "1"})
    assert allowed.returncode == 0 and "loaded" in allowed.stdout, allowed.stderr[-2000:]


def test_every_dependency_is_pinned():
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    assert requirements and all("==" in requirement for requirement in requirements), \
        [r for r in requirements if "==" not in r]


def test_the_lock_holds_every_pin_at_its_version():
    """requirements.lock (what `make setup` installs, as constraints) agrees with every pin of the project and
    its dev extra, so neither can drift from the other."""
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    locked = dict(line.split("==", 1) for line in (PACKAGE.parent / "requirements.lock").read_text().splitlines()
                  if line and not line.startswith("#"))
    locked = {name.lower().replace("_", "-"): version for name, version in locked.items()}
    from packaging.requirements import Requirement

    pins = [(r.name, str(r.specifier).removeprefix("=="))
            for r in map(Requirement, project["dependencies"] + project["optional-dependencies"]["dev"])]
    disagreeing = {name: (version, locked.get(name.lower())) for name, version in pins if locked.get(name.lower()) != version}
    assert disagreeing == {}
