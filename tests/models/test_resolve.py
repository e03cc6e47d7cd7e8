"""Model resolution: the forms --model takes, and a conversion cache that concurrent runs cannot corrupt."""

import multiprocessing
import time
from pathlib import Path

import pytest

from tunelab.models.resolve import ModelNotFound, _convert_once, cache_dir, resolve_model


def slow_build(out: Path) -> None:
    """Stands in for the 40-second GGUF conversion: slow, and leaves a trace of each time it runs."""
    out.mkdir()
    time.sleep(1.5)
    (out / "weights.bin").write_bytes(b"x" * 1000)
    (out / "config.json").write_text("{}")
    with open(out.parent.parent / "builds.log", "a") as log:  # out: models/.m.tmp-…
        log.write("built\n")


def convert(target: str) -> None:
    _convert_once(Path(target), slow_build)


def test_two_first_runs_at_once_convert_once_and_leave_a_complete_cache(tmp_path):
    target = tmp_path / "models" / "m"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=convert, args=(str(target),)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert (tmp_path / "builds.log").read_text() == "built\n"
    assert (target / "config.json").is_file() and (target / "weights.bin").stat().st_size == 1000
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == ["m"]  # no temp dirs


def test_a_failed_conversion_leaves_nothing_behind(tmp_path):
    target = tmp_path / "models" / "m"

    def broken(out: Path) -> None:
        out.mkdir()
        (out / "half-written").write_text("…")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _convert_once(target, broken)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_model_spec_forms(tmp_path, tiny_model_dir):
    local = resolve_model(str(tiny_model_dir))
    assert local.source == "local" and Path(local.path) == tiny_model_dir.resolve()
    with pytest.raises(FileNotFoundError, match="no such GGUF"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_a_hub_id_is_handed_on_only_when_the_hub_answers(monkeypatch, tmp_path):
    import socket

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
    assert resolve_model("google/gemma-3-270m").source == "hub"
    listening.close()  # nothing listens there now: the hub is unreachable
    started = time.monotonic()
    with pytest.raises(ModelNotFound, match=r"google/gemma-3-270m: no such folder here \(.*gemma-3-270m\), not in the Hugging Face cache, and the hub \(127.0.0.1:"):
        resolve_model("google/gemma-3-270m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE is set"):
        resolve_model("google/gemma-3-270m")
    assert time.monotonic() - started < 2


def test_a_missing_path_or_unfinished_run_fails_at_once_naming_it(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "killed").mkdir(parents=True)
    (tmp_path / "runs" / "killed" / "config.yaml").write_text("data: x.jsonl\n")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # were the hub asked, this would be the error
    with pytest.raises(ModelNotFound, match=r"runs/nope: no such run, model directory or .gguf file \(looked for "):
        resolve_model("runs/nope")
    with pytest.raises(ModelNotFound, match=r"this run has not finished.*tunelab train --resume runs/killed"):
        resolve_model("runs/killed")
    with pytest.raises(ModelNotFound, match="no such run"):
        resolve_model("./typo")


def test_a_tokenizer_is_loaded_once_until_its_files_or_template_change(tmp_path, tiny_model_dir):
    import os
    import shutil

    from tunelab.models.resolve import load_tokenizer

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    first = load_tokenizer(str(folder))
    assert load_tokenizer(str(folder)) is first
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    own = load_tokenizer(str(folder), str(template))
    assert own is not first and own.chat_template == template.read_text()
    assert first.chat_template != own.chat_template  # the shared one was not changed by the other load
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    os.utime(template, ns=(time.time_ns() + 10**9,) * 2)
    assert load_tokenizer(str(folder), str(template)).chat_template == template.read_text()
    copy = tmp_path / "run-tokenizer"  # a run keeps a copy of its base's tokenizer files, and only those
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(folder / name, copy / name)
    assert load_tokenizer(str(copy)) is first  # the same tokenizer, whatever folder holds it: loaded once
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")
    assert load_tokenizer(str(folder)) is not first  # an edited tokenizer folder is read again


def test_a_tokenizer_s_key_follows_what_it_is_read_from(tmp_path, tiny_model_dir):
    import json
    import shutil

    from tunelab.conversation.templates import GEMMA_CHAT_TEMPLATE
    from tunelab.models.resolve import TEMPLATE_NOTE, _tokenizer_key

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    key = _tokenizer_key(str(folder), None)
    (folder / "generation_config.json").write_text("{}")
    assert _tokenizer_key(str(folder), None) == key  # not read by the tokenizer
    (folder / "config.json").write_text("{}")
    assert _tokenizer_key(str(folder), None) == key  # its class is named in tokenizer_config.json
    config = folder / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    assert settings.pop("tokenizer_class")
    config.write_text(json.dumps(settings))
    unnamed = _tokenizer_key(str(folder), None)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    assert _tokenizer_key(str(folder), None) != unnamed  # config.json now chooses the class
    # Our template note and a template file holding the same template are one tokenizer; another is not.
    (folder / "chat_template.jinja").write_text(GEMMA_CHAT_TEMPLATE)
    by_file = _tokenizer_key(str(folder), None)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    (folder / TEMPLATE_NOTE).write_text(json.dumps({"chat_template": "gemma"}))
    assert _tokenizer_key(str(folder), None) == by_file
    (folder / TEMPLATE_NOTE).unlink()
    assert _tokenizer_key(str(folder), None) != by_file
