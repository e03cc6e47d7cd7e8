"""The evaluation report opened in a real browser (headless Chromium): every section is there, the verdict is
the one in results.json and quotes its numbers, and the page renders to a screenshot.

Chromium comes from Debian's `chromium` package, which `make setup` installs (as root, through apt)."""

import json
import re
import shutil
import subprocess

import pytest

from tunelab.core.settings import TrainConfig
from tunelab.eval.run import EvalConfig, evaluate
from tunelab.train.local import train

from tests.conftest import EXAMPLES

SECTIONS = ["verdict", "scores", "comparisons", "slices", "forgetting", "training", "scorers", "examples"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("headless Chromium is needed for the report test: run `make setup` (installs Debian's chromium)")
    return found


@pytest.mark.slow
def test_the_report_opens_in_a_browser_with_every_section(tmp_path, tiny_model_dir, support_conversations,
                                                         write_jsonl):
    train_file = write_jsonl("train.jsonl", support_conversations[:8])
    held_out = [dict(c, metadata={"tags": ["edge case" if k % 3 == 0 else "common"]})
                for k, c in enumerate(support_conversations[40:49])]
    run = train(TrainConfig(data=str(train_file), model=str(tiny_model_dir), out=str(tmp_path / "run"),
                            n_epochs=1, batch_size=4))
    out = evaluate(EvalConfig(model=str(run), data=str(write_jsonl("test.jsonl", held_out)),
                              rubric=str(EXAMPLES / "rubric.yaml"), max_new_tokens=12))
    results = json.loads((out / "results.json").read_text())
    page = f"file://{out / 'report.html'}"
    browser = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]

    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    for section in SECTIONS:
        assert re.search(rf'<section id="{section}"', dom), f"section {section} missing from the rendered page"
    verdict = re.search(r'<p class="verdict">(.*?)</p>', dom, re.S).group(1)
    assert " ".join(verdict.split()) == " ".join(results["verdict"].split()).replace("&", "&amp;")
    primary = results["systems"]["fine_tuned"]["scores"]["rubric"]["mean"]
    assert f"{100 * primary:.0f}" in verdict  # the verdict quotes the fine-tune's own rubric score
    assert dom.count('class="example"') == 9 and "edge case" in dom

    screenshot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={screenshot}", "--window-size=1280,2400", page], capture_output=True,
                   timeout=120)
    assert screenshot.stat().st_size > 50_000  # a rendered page, not a blank one
