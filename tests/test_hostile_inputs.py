"""Hostile input, through the real command: a clear `error:` naming the file (and line), exit 1, never a
traceback, no file left behind, and every input unchanged.

Each case prepares its files in an empty directory, runs `tunelab …` there, and compares the directory
before and after. The README counts the cases (`HOSTILE_CASES`, plus the property-based tests in
tests/data/test_properties.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import run_cli

GOOD = {"messages": [{"role": "user", "content": "Where is my order?"},
                     {"role": "assistant", "content": "It ships within 2 business days."}]}
DEEP = b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"


ITEMS = ["lamp", "rug", "sofa", "chair", "table", "mirror", "vase", "clock", "shelf", "desk", "stool", "bench",
         "quilt", "towel", "kettle", "blender", "toaster", "pillow", "curtain", "basket"]


def good_lines(count: int = 12) -> bytes:
    """Distinct conversations (they differ in words, not just digits, so none is a near-duplicate)."""
    return b"".join(json.dumps({"messages": [{"role": "user", "content": f"Where is my {item}?"},
                                             GOOD["messages"][1]]}).encode() + b"\n" for item in ITEMS[:count])


def with_deep_line(directory: Path) -> None:
    (directory / "data.jsonl").write_bytes(good_lines(3) + DEEP + b"\n" + good_lines(9))


def pair_lines(count: int = 12) -> bytes:
    """Distinct preference pairs."""
    return b"".join(json.dumps({"input": {"messages": [{"role": "user", "content": f"Where is my {item}?"}]},
                                "preferred_output": [GOOD["messages"][1]],
                                "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}).encode() + b"\n"
                    for item in ITEMS[:count])


def task_lines(count: int = 12) -> bytes:
    """Distinct reinforcement tasks."""
    return b"".join(json.dumps({"messages": [{"role": "user", "content": f"Where is my {item}?"}],
                                "item": item}).encode() + b"\n" for item in ITEMS[:count])


def pairs_with_deep_line(directory: Path) -> None:
    (directory / "pairs.jsonl").write_bytes(pair_lines(3) + DEEP.replace(b'"messages"', b'"input"') + b"\n" + pair_lines(9))


def pairs_with_hostile_shapes(directory: Path) -> None:
    """Pairs whose parts are the wrong kinds of JSON: a string input, outputs as objects, a chat line."""
    hostile = [{"input": "Where is my lamp?", "preferred_output": "Here.", "non_preferred_output": None},
               {"input": {"messages": {"role": "user"}}, "preferred_output": [[]], "non_preferred_output": [{}]},
               GOOD]
    (directory / "pairs.jsonl").write_bytes(pair_lines(10) + b"".join(json.dumps(h).encode() + b"\n" for h in hostile))


def make_fifo(directory: Path) -> None:
    os.mkfifo(directory / "pipe.jsonl")


def part_type_is_an_object(directory: Path) -> None:
    """A content part whose `type` is itself an object (found crashing the validator by fuzzing the server)."""
    bad = {"messages": [{"role": "user", "content": [{"type": {"text": "hi"}, "text": "hi"}]},
                        {"role": "assistant", "content": "Hello."}]}
    (directory / "data.jsonl").write_bytes(good_lines(11) + json.dumps(bad).encode() + b"\n")


def data_file(directory: Path) -> None:
    (directory / "data.jsonl").write_bytes(good_lines())


def file_where_a_directory_goes(directory: Path) -> None:
    data_file(directory)
    (directory / "blocker").write_text("a file, not a directory\n")


def data_and_a_directory(directory: Path) -> None:
    data_file(directory)
    (directory / "out").mkdir()


def split_input_inside_out_dir(directory: Path) -> None:
    (directory / "split").mkdir()
    (directory / "split" / "train.jsonl").write_bytes(good_lines(20))


def weight_zero_everywhere(directory: Path) -> None:
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                      {"role": "assistant", "content": "An answer here.", "weight": 0}]}) for i in range(12)]
    (directory / "data.jsonl").write_text("\n".join(lines) + "\n")


def bad_schema(directory: Path) -> None:
    data_file(directory)
    (directory / "schema.json").write_text(json.dumps({"type": "object", "properties": {"id": {"type": "text"}}}))


def bad_probes(directory: Path) -> None:
    data_file(directory)
    good = {"id": "p1", "kind": "choice", "context": "Snow is", "choices": [" white", " green"], "answer": 0}
    (directory / "probes.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(dict(good, id="p2", answer=5)) + "\n")


def binary_beside_data(name: str):
    """The data file, and `name` holding bytes that are not UTF-8 text (a settings, rubric, schema or
    answers file that is really something else)."""
    def prepare(directory: Path) -> None:
        data_file(directory)
        (directory / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    return prepare


def bad_rubric(directory: Path) -> None:
    data_file(directory)
    (directory / "rubric.yaml").write_text("checks:\n  - id: greeting\n    regex: '(unclosed'\n")


@dataclass
class Case:
    name: str
    prepare: Callable[[Path], None]
    arguments: list[str]  # `{model}` and `{full_run}` are filled in
    message: str  # must appear in the `error:` line
    needs: list[str] = field(default_factory=list)  # fixtures: "model", "full_run"
    exit_code: int = 1  # 1: bad input; 2: a usage error (a value that is not one of the choices)


HOSTILE_CASES = [
    # JSON nested 10,000 levels deep, in every command that reads data.
    Case("deep-json-validate", with_deep_line, ["data", "validate", "data.jsonl", "--model", "none"],
         "data.jsonl:4: nested too deeply"),
    Case("deep-json-stats", with_deep_line, ["data", "stats", "data.jsonl", "--model", "none"],
         "data.jsonl:4: nested too deeply"),
    Case("deep-json-convert", lambda d: (d / "deep.json").write_bytes(DEEP),
         ["data", "convert", "deep.json", "--out", "out.jsonl"], "deep.json: nested too deeply"),
    Case("deep-json-split", with_deep_line, ["data", "split", "data.jsonl", "--out", "split"],
         "data.jsonl:4: line: nested too deeply"),
    Case("deep-json-train", with_deep_line, ["train", "--data", "data.jsonl", "--model", "{model}", "--out", "run"],
         "data.jsonl:4: line: nested too deeply", ["model"]),
    Case("validate-pair-deep-json", pairs_with_deep_line, ["data", "validate", "pairs.jsonl", "--model", "none"],
         "pairs.jsonl:4: nested too deeply"),
    Case("validate-pair-hostile-shapes", pairs_with_hostile_shapes, ["data", "validate", "pairs.jsonl", "--model", "none"],
         "pairs.jsonl:11: input: must be {\"messages\": [...]}"),
    Case("train-on-preference-pairs", lambda d: (d / "pairs.jsonl").write_bytes(pair_lines()),
         ["train", "--data", "pairs.jsonl", "--model", "{model}", "--out", "run"],
         "pairs.jsonl: holds preference pairs", ["model"]),
    # Another tool's data given to train: said once, with the command that converts it.
    Case("train-on-alpaca", lambda d: (d / "alpaca.jsonl").write_text("".join(
        json.dumps({"instruction": f"Say {n}.", "input": "", "output": f"{n}."}) + "\n" for n in range(12))),
         ["train", "--data", "alpaca.jsonl", "--model", "{model}", "--out", "run"],
         "alpaca.jsonl: holds Alpaca data, not chat JSONL; convert the file first: tunelab data convert alpaca.jsonl "
         "--out alpaca.chat.jsonl", ["model"]),
    Case("dpo-train-on-trl-pairs", lambda d: (d / "trl.jsonl").write_text("".join(
        json.dumps({"prompt": f"Say {n}.", "chosen": f"{n}.", "rejected": "No."}) + "\n" for n in range(12))),
         ["train", "--method", "dpo", "--data", "trl.jsonl", "--model", "{model}", "--out", "run"],
         "trl.jsonl: holds TRL's preference data, not OpenAI preference JSONL; convert the file first: tunelab data "
         "convert trl.jsonl --out trl.pairs.jsonl", ["model"]),
    # The same hostile pair files trained on with --method dpo: the reader's errors, before any model loads.
    Case("dpo-train-pair-deep-json", pairs_with_deep_line,
         ["train", "--method", "dpo", "--data", "pairs.jsonl", "--model", "{model}", "--out", "run"],
         "pairs.jsonl:4: line: nested too deeply", ["model"]),
    Case("dpo-train-pair-hostile-shapes", pairs_with_hostile_shapes,
         ["train", "--method", "dpo", "--data", "pairs.jsonl", "--model", "{model}", "--out", "run"],
         "9 problem(s) in the data", ["model"]),  # each named below it, as data validate names them
    Case("dpo-train-on-chat", lambda d: (d / "data.jsonl").write_bytes(good_lines()),
         ["train", "--method", "dpo", "--data", "data.jsonl", "--model", "{model}", "--out", "run"],
         "data.jsonl:1: input: holds chat examples (messages), not preference pairs", ["model"]),
    Case("dpo-train-validation-is-chat", lambda d: ((d / "pairs.jsonl").write_bytes(pair_lines()),
                                                    (d / "data.jsonl").write_bytes(good_lines())),
         ["train", "--method", "dpo", "--data", "pairs.jsonl", "--validation", "data.jsonl", "--model", "{model}",
          "--out", "run"], "data.jsonl:1: input: holds chat examples", ["model"]),
    Case("dpo-train-fifo", make_fifo, ["train", "--method", "dpo", "--data", "pipe.jsonl", "--model", "{model}",
                                       "--out", "run"], "pipe.jsonl: not a regular file", ["model"]),
    Case("dpo-from-a-run-that-is-not-there", lambda d: (d / "pairs.jsonl").write_bytes(pair_lines()),
         ["train", "--method", "dpo", "--data", "pairs.jsonl", "--from", "runs/nope", "--out", "run"],
         "--from runs/nope: not a finished run"),
    Case("dpo-beta-out-of-range", lambda d: (d / "pairs.jsonl").write_bytes(pair_lines()),
         ["train", "--method", "dpo", "--data", "pairs.jsonl", "--beta", "5", "--out", "run"],
         "--beta: must be a number above 0, at most 2, or 'auto' (got '5')"),
    # A grpo run's grader and tasks: refused before any model loads, naming the file and the field.
    Case("grpo-without-a-grader", lambda d: (d / "tasks.jsonl").write_bytes(task_lines()),
         ["train", "--method", "grpo", "--data", "tasks.jsonl", "--out", "run"], "grader: a grpo run needs a grader"),
    Case("grpo-grader-missing", lambda d: (d / "tasks.jsonl").write_bytes(task_lines()),
         ["train", "--method", "grpo", "--data", "tasks.jsonl", "--grader", "nope.json", "--out", "run"],
         "nope.json: no such file"),
    Case("grpo-grader-not-json", lambda d: ((d / "tasks.jsonl").write_bytes(task_lines()),
                                            (d / "grader.json").write_text("{'type': 'string_check'")),
         ["train", "--method", "grpo", "--data", "tasks.jsonl", "--grader", "grader.json", "--out", "run"],
         "grader.json: not a JSON grader"),
    Case("grpo-grader-bad-field", lambda d: ((d / "tasks.jsonl").write_bytes(task_lines()), (d / "grader.json").write_text(
        json.dumps({"type": "string_check", "name": "c", "input": "{{sample.output_text}}", "reference": "x",
                    "operation": "equals"}))),
         ["train", "--method", "grpo", "--data", "tasks.jsonl", "--grader", "grader.json", "--out", "run"],
         "grader.json: grader.operation: Input should be 'eq', 'ne', 'like' or 'ilike'"),
    Case("grpo-train-on-chat", lambda d: ((d / "data.jsonl").write_bytes(good_lines()), (d / "grader.json").write_text(
        json.dumps({"type": "string_check", "name": "c", "input": "{{sample.output_text}}", "reference": "x",
                    "operation": "eq"}))),
         ["train", "--method", "grpo", "--data", "data.jsonl", "--grader", "grader.json", "--model", "{model}",
          "--out", "run"], "data.jsonl:1: messages: holds chat examples (each ending with the assistant's reply)",
         ["model"]),
    Case("eval-tasks-without-a-grader", lambda d: (d / "tasks.jsonl").write_bytes(task_lines()),
         ["eval", "--model", "{full_run}", "--data", "tasks.jsonl"], "tasks.jsonl: its examples have no reference replies",
         ["full_run"]),
    Case("split-preference-pairs", lambda d: (d / "pairs.jsonl").write_bytes(pair_lines()),
         ["data", "split", "pairs.jsonl", "--out", "split"], "pairs.jsonl: holds preference pairs"),
    Case("convert-trl-nothing-converts", lambda d: (d / "trl.jsonl").write_text(
        json.dumps({"chosen": {"a": 1}, "rejected": [1, 2]}) + "\n" + json.dumps({"chosen": "x", "rejected": "y"}) + "\n"),
         ["data", "convert", "trl.jsonl", "--out", "pairs.jsonl", "--format", "trl"],
         "trl.jsonl: no record could be converted"),
    Case("validate-part-type-object", part_type_is_an_object, ["data", "validate", "data.jsonl", "--model", "none"],
         "data.jsonl:12: messages[0].content[0]: each part must be"),
    # Paths that are not data files.
    Case("stats-missing", lambda d: None, ["data", "stats", "missing.jsonl"], "missing.jsonl: no such file"),
    Case("stats-directory", lambda d: (d / "folder").mkdir(), ["data", "stats", "folder"], "folder: is a directory"),
    Case("stats-fifo", make_fifo, ["data", "stats", "pipe.jsonl"], "pipe.jsonl: not a regular file"),
    Case("validate-fifo", make_fifo, ["data", "validate", "pipe.jsonl"], "pipe.jsonl: not a regular file"),
    Case("validate-missing-validation-file", data_file,
         ["data", "validate", "data.jsonl", "--validation", "nope.jsonl", "--model", "none"], "nope.jsonl: no such file"),
    Case("render-directory", lambda d: (d / "folder").mkdir(), ["data", "render", "folder"], "folder: is a directory"),
    Case("split-fifo", make_fifo, ["data", "split", "pipe.jsonl", "--out", "split"], "pipe.jsonl: not a regular file"),
    Case("convert-fifo", make_fifo, ["data", "convert", "pipe.jsonl", "--out", "out.jsonl"], "pipe.jsonl: not a regular file"),
    Case("train-missing-data", lambda d: None, ["train", "--data", "missing.jsonl", "--model", "{model}", "--out", "run"],
         "missing.jsonl: no such file", ["model"]),
    Case("eval-missing-data", lambda d: None, ["eval", "--model", "{full_run}", "--data", "missing.jsonl"],
         "missing.jsonl: no such file", ["full_run"]),
    # Outputs that cannot be written, or must not be.
    Case("convert-out-is-a-directory", data_and_a_directory, ["data", "convert", "data.jsonl", "--out", "out"],
         "out: is a directory"),
    Case("convert-out-under-a-file", file_where_a_directory_goes,
         ["data", "convert", "data.jsonl", "--out", "blocker/out.jsonl"], "blocker is a file, not a directory"),
    Case("convert-out-unwritable", data_file, ["data", "convert", "data.jsonl", "--out", "/proc/tunelab-out.jsonl"],
         "/proc/tunelab-out.jsonl: cannot write it"),
    Case("convert-onto-its-input", data_file, ["data", "convert", "data.jsonl", "--out", "data.jsonl", "--force"],
         "this is the input"),
    Case("split-out-dir-under-a-file", file_where_a_directory_goes, ["data", "split", "data.jsonl", "--out", "blocker/x"],
         "blocker is a file, not a directory"),
    Case("split-force-onto-its-input", split_input_inside_out_dir,
         ["data", "split", "split/train.jsonl", "--out", "split", "--force"], "this is the input"),
    Case("train-out-is-a-file", file_where_a_directory_goes,
         ["train", "--data", "data.jsonl", "--model", "{model}", "--out", "blocker"], "blocker: is a file", ["model"]),
    Case("eval-out-is-a-file", file_where_a_directory_goes,
         ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--out", "blocker"], "blocker: is a file", ["full_run"]),
    # Settings and models.
    Case("train-nothing-to-train", weight_zero_everywhere,
         ["train", "--data", "data.jsonl", "--model", "{model}", "--out", "run", "--max-length", "64"],
         "no example has a trained token", ["model"]),
    Case("train-bad-dtype", data_file, ["train", "--data", "data.jsonl", "--model", "{model}", "--dtype", "fp8"],
         "'fp8' is not one of 'auto', 'fp32', 'bf16', 'fp16'", ["model"], exit_code=2),
    Case("train-model-without-template", data_file,
         ["train", "--data", "data.jsonl", "--model", "{bare_model}", "--out", "run"],
         "the model has no chat template", ["bare_model"]),
    Case("chat-missing-run", lambda d: None, ["chat", "./runs/nope", "hello"],
         "./runs/nope: no such run, model directory or .gguf file (looked for "),
    Case("chat-base-on-a-full-fine-tune", lambda d: None, ["chat", "{full_run}", "hello", "--base"],
         "is a full fine-tune (every weight changed), so there is no adapter to switch off", ["full_run"]),
    Case("eval-invalid-rubric-regex", bad_rubric,
         ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--rubric", "rubric.yaml"],
         "rubric.yaml: checks[0] (greeting): regex: not a valid regular expression", ["full_run"]),
    # Every other file a command reads, given bytes that are not text.
    Case("train-config-not-text", binary_beside_data("config.yaml"), ["train", "--config", "config.yaml"],
         "config.yaml: not UTF-8 text"),
    Case("advise-answers-not-text", binary_beside_data("answers.yaml"), ["advise", "--answers", "answers.yaml", "--json"],
         "answers.yaml: not UTF-8 text"),
    Case("eval-rubric-not-text", binary_beside_data("rubric.yaml"),
         ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--rubric", "rubric.yaml"],
         "rubric.yaml: not UTF-8 text", ["full_run"]),
    Case("eval-schema-not-json", binary_beside_data("schema.json"),
         ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--scorers", "json_schema", "--schema", "schema.json"],
         "schema.json: not valid JSON", ["full_run"]),
    Case("eval-unknown-scorer", data_file, ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--scorers", "bleu"],
         "--scorers: unknown scorer bleu", ["full_run"]),
    Case("eval-invalid-schema", bad_schema,
         ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--schema", "schema.json"],
         "schema.json: properties/id/type: not a valid JSON Schema", ["full_run"]),
    Case("eval-schema-without-json-references", data_file,
         ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--scorers", "json_schema"],
         "data.jsonl: line 1: the reference reply is not JSON", ["full_run"]),
    Case("eval-bad-probe-file", bad_probes,
         ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--forgetting", "probes.jsonl"],
         "probes.jsonl: line 2: answer: must be the index of the right choice", ["full_run"]),
    Case("eval-missing-probe-file", data_file,
         ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--forgetting", "mine.jsonl"],
         "--forgetting mine.jsonl: no such file", ["full_run"]),
    Case("eval-missing-shots-file", data_file,
         ["eval", "--model", "{full_run}", "--data", "data.jsonl", "--fewshot", "2", "--fewshot-from", "nope.jsonl"],
         "--fewshot-from nope.jsonl: no such file", ["full_run"]),
]


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every path under `directory` with its content (None for directories and special files)."""
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir):
    """A finished full fine-tune of the tiny model (no adapter to switch off)."""
    from tunelab.core.settings import TrainConfig
    from tunelab.train.local import train

    directory = tmp_path_factory.mktemp("full-run")
    data = directory / "train.jsonl"
    data.write_bytes(good_lines())
    return train(TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(directory / "run"), adapter="full",
                             n_epochs=1, batch_size=4, dtype="fp32"))


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory, tiny_model_dir):
    """The tiny model with its chat template taken away."""
    import shutil

    directory = tmp_path_factory.mktemp("bare") / "model"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("case", HOSTILE_CASES, ids=[case.name for case in HOSTILE_CASES])
def test_hostile_input_gets_one_clear_error_and_changes_nothing(case, tmp_path, request):
    work = tmp_path / "work"
    work.mkdir()
    case.prepare(work)
    fills = {"model": lambda: request.getfixturevalue("tiny_model_dir"),
             "full_run": lambda: request.getfixturevalue("full_run"),
             "bare_model": lambda: request.getfixturevalue("bare_model")}
    values = {name: str(fills[name]()) for name in case.needs}
    arguments = [argument.format(**values) if "{" in argument else argument for argument in case.arguments]
    before = snapshot(work)
    result = run_cli(*arguments, cwd=work)  # in-process: a subprocess adds nothing these cases test
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == case.exit_code, output[-3000:]
    # an error is one line on stderr (a usage error in click's words); `data validate` reports on stdout
    error_lines = [line for line in (result.stderr + result.stdout).splitlines() if line.lower().startswith("error:")]
    assert error_lines, output[-3000:]
    assert case.message in " ".join(error_lines), error_lines
    assert snapshot(work) == before  # no partial output, no temporary files, inputs unchanged
