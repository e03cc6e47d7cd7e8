"""The advisor never defaults to fine-tuning, and every command it prints as a next step runs as printed."""

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from tests.advise.test_decide import READY, format_task, write
from tests.conftest import EXAMPLES, read_jsonl
from tunelab.cli.app import app

runner = CliRunner()


def advise(*arguments: str) -> dict:
    result = runner.invoke(app, ["advise", *arguments, "--json"], input="")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def commands_in(steps: list[str]) -> list[str]:
    """Every `tunelab …` command in the printed steps (a step may be one, or name one after a colon), without
    its trailing `# comment`."""
    found = []
    for step in steps:
        for command in re.findall(r"tunelab [^;]*", step):
            found.append(command.split("  #")[0].strip())
    return found


def test_nothing_known_is_not_a_fine_tune():
    advice = advise()
    assert advice["recommendation"] == "prompt_first"
    assert {r["step"] for r in advice["reasons"]} == {"quality data", "would RAG solve it", "best base model tried",
                                                       "prompt optimised", "good reason"}
    assert all(r["finding"].startswith("not known yet") for r in advice["reasons"])


def test_a_volume_below_the_break_even_is_a_reason_against(tmp_path):
    advice = advise("--data", str(EXAMPLES / "train.jsonl"), "--volume", "300")
    assert advice["recommendation"] == "prompt_first"
    against = next(r for r in advice["reasons"] if r["step"] == "high-volume narrow use")
    assert against["finding"].startswith("against: at 300 calls a day")
    # with the framework answered and saving money the goal, the volume still decides
    answers = {**READY.__dict__, "goal": "efficiency_at_scale"}
    assert advise_with(tmp_path, answers, "--data", str(EXAMPLES / "train.jsonl"), "--volume", "300")["recommendation"] \
        == "prompt_first"


def advise_with(folder, answers: dict, *arguments: str) -> dict:
    """The advice with these answers, written to a YAML file in `folder`."""
    path = folder / f"answers-{len(list(folder.glob('answers-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(answers))
    return advise(*arguments, "--answers", str(path))


@pytest.mark.slow
def test_every_next_step_the_advisor_prints_runs(tmp_path, monkeypatch, tiny_model_dir):
    """Each recommendation's next steps, for data and a model of the user's own, run as printed (the tiny model
    stands in for the one the user would fine-tune; its name is in the commands because advise was told it)."""
    data = write(tmp_path, format_task(150))
    model = ["--model", str(tiny_model_dir)]
    conflicting = format_task(100) + [dict(c, messages=c["messages"][:2] + [{"role": "assistant", "content": "no"}])
                                      for c in format_task(20)]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n" + open(data).read())
    (tmp_path / "conflicting").mkdir()
    scenarios = {
        "fine_tune": advise_with(tmp_path, READY.__dict__, "--data", data, *model),
        "prompt_first (unknown)": advise("--data", data, *model),
        "prompt_first (not optimised)": advise_with(tmp_path, {**READY.__dict__, "optimized_prompt": "no"}, "--data",
                                                    data, *model),
        "prompt_first (volume)": advise_with(tmp_path, {**READY.__dict__, "goal": "efficiency_at_scale"}, "--data",
                                             data, "--volume", "10", *model),
        "improve_data (errors)": advise("--data", str(broken), *model),
        "improve_data (conflicts)": advise("--data", write(tmp_path / "conflicting", conflicting), *model),
        "nothing known": advise(),
    }
    assert scenarios["fine_tune"]["recommendation"] == "fine_tune"
    assert {name: s["recommendation"] for name, s in scenarios.items()}["improve_data (conflicts)"] == "improve_data"
    assert not any(s["recommendation"] == "fine_tune" for name, s in scenarios.items() if name != "fine_tune")
    commands = list(dict.fromkeys(c for s in scenarios.values() for c in commands_in(s["next_steps"])))
    assert any(c.startswith("tunelab train ") for c in commands) and any(c.startswith("tunelab eval ") for c in commands)

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "answers.yaml").write_text(yaml.safe_dump(READY.__dict__))
    ran = []
    for command in commands:
        # the placeholders a user fills in: their data file, their volume
        arguments = (command.replace("YOUR_DATA.jsonl", data).replace("CALLS_PER_DAY", "300")).split()[1:]
        if arguments[:2] == ["data", "split"] and (work / "data").exists():
            arguments.append("--force")  # the same split again, as the user would rerun it
        result = runner.invoke(app, [*arguments, *(["--quiet"] if arguments[0] in ("train", "eval") else [])], input="")
        assert result.exit_code in ((0, 1) if arguments[:2] == ["data", "validate"] else (0,)), (command, result.output)
        ran.append(arguments[0] if arguments[0] != "data" else " ".join(arguments[:2]))
    assert {"advise", "data split", "data validate", "train", "eval"} <= set(ran)
    assert (work / "runs" / "first-fine-tune" / "eval" / "results.json").is_file()
