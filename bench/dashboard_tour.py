"""The dashboard's whole flow once on a real model, with a screenshot of every page: sign in, check and upload a
training file, create a job and watch it train, the lists, a file's trained-token view, the playground with the
base and the fine-tune side by side, an evaluation and its report, an export.

    .venv/bin/python bench/dashboard_tour.py --out screenshots/ [--model default] [--examples 40] [--epochs 2]

Screenshots are PNGs named by step, at 1280 px wide and, for the pages people open on a phone, 390 px. They are
for looking at: what a user sees on each page, on a model that talks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dashboard.browser import CHROMIUM_ARGUMENTS, ConsoleWatch, chromium_path  # noqa: E402
from tests.serving import API_KEY, free_port  # noqa: E402

ALIAS = "gpt-4o-mini-2024-07-18"


def start_server(data_dir: Path, model: str) -> tuple[subprocess.Popen, str]:
    import httpx2 as httpx

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--api-key", API_KEY, "--alias", f"{ALIAS}={model}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TUNELAB_API_KEY=""))
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}"
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("tunelab serve did not start")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def tour(page, base: str, out: Path, scratch: Path, client, options) -> list[str]:
    from playwright.sync_api import expect

    shots: list[str] = []

    def shot(name: str, full_page: bool = True) -> None:
        page.screenshot(path=out / f"{name}.png", full_page=full_page)
        shots.append(name)

    def narrow(name: str) -> None:
        page.set_viewport_size({"width": 390, "height": 844})  # resized, not reloaded: forms keep what was filled
        page.wait_for_timeout(1500)
        shot(name)
        page.set_viewport_size({"width": 1280, "height": 900})

    from tests.conftest import EXAMPLES, read_jsonl

    conversations = read_jsonl(EXAMPLES / "train.jsonl")[:options.examples]
    bad = [json.dumps(c) for c in conversations]
    bad[4] = json.dumps({"messages": [{"role": "user", "content": "Where is my parcel?"}, {"role": "assistant"}]})
    (scratch / "support-draft.jsonl").write_text("\n".join(bad) + "\n")
    (scratch / "support-train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations))
    (scratch / "support-test.jsonl").write_text((EXAMPLES / "test.jsonl").read_text())

    page.goto(f"{base}/jobs")
    shot("01-login")
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/jobs")
    shot("02-jobs-empty")

    page.goto(f"{base}/jobs/new")
    page.get_by_label("Or upload a new one").set_input_files(scratch / "support-draft.jsonl")
    expect(page.locator("#data-report .findings li", has_text="Error").first).to_contain_text("line 5")
    shot("03-new-job-bad-line")
    page.get_by_label("Or upload a new one").set_input_files(scratch / "support-train.jsonl")
    expect(page.locator("#data-report")).to_contain_text("no errors")
    shot("04-new-job-report")
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("#data-report")).to_contain_text("Uploaded as file-")
    page.get_by_label("n_epochs").fill(str(options.epochs))
    page.get_by_label("Suffix (optional)").fill("support")
    shot("05-new-job-ready")
    narrow("05n-new-job-390")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(f"{base}/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    wait_for(lambda: int(page.get_attribute("#loss-chart", "data-points") or 0) >= 6, 900, "the first points")
    shot("06-job-running")
    narrow("06n-job-running-390")
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job_id).status in ("succeeded", "failed", "cancelled"),
             3600, "the job")
    page.wait_for_timeout(3000)
    shot("07-job-finished")
    job = client.fine_tuning.jobs.retrieve(job_id)
    if job.status != "succeeded":
        raise RuntimeError(f"the job ended {job.status}: {job.error}")

    page.goto(f"{base}/jobs")
    page.wait_for_timeout(1000)
    shot("08-jobs")
    page.goto(f"{base}/files")
    page.wait_for_timeout(1000)
    shot("09-files")
    page.goto(f"{base}/files/{job.training_file}")
    page.wait_for_timeout(2000)
    shot("10-file-preview")
    narrow("10n-file-preview-390")

    page.goto(f"{base}/models")
    page.wait_for_timeout(1000)
    shot("11-models")

    page.goto(f"{base}/playground?models={job.fine_tuned_model},{ALIAS}")
    page.get_by_label("System prompt (optional)").fill("You are the support assistant of an online shop.")
    page.get_by_label("Max tokens").fill("80")
    page.get_by_label("Message").fill("My parcel says delivered but I never got it. What can I do?")
    page.get_by_role("button", name="Send to every model").click()
    expect(page.locator("li.reply[data-done='true']")).to_have_count(2, timeout=300_000)
    shot("12-playground")
    narrow("12n-playground-390")

    test_file = client.files.create(file=(scratch / "support-test.jsonl").open("rb"), purpose="fine-tune").id
    page.goto(f"{base}/evaluations?model={job.fine_tuned_model}")
    page.get_by_label("Held-out file").select_option(test_file)
    page.get_by_label("First N examples (optional)").fill(str(options.eval_examples))
    page.get_by_label("Max new tokens (optional)").fill("64")
    page.get_by_role("button", name="Start evaluation").click()
    expect(page.locator("#start-message")).to_contain_text("Started eval_")
    page.wait_for_timeout(5000)
    shot("13-evaluation-running")
    row = page.locator("#evaluations tbody tr").first
    expect(row).to_contain_text("succeeded", timeout=3_600_000)
    page.goto(f"{base}/evaluations?model={ALIAS}")  # the base alone, to compare with
    page.get_by_label("Held-out file").select_option(test_file)
    page.get_by_label("First N examples (optional)").fill(str(options.eval_examples))
    page.get_by_label("Max new tokens (optional)").fill("64")
    page.get_by_label("Forgetting check").uncheck()
    page.get_by_role("button", name="Start evaluation").click()
    rows = page.locator("#evaluations tbody tr")
    expect(rows.first).to_contain_text("succeeded", timeout=3_600_000)
    shot("14-evaluations")
    row = rows.nth(1)
    with page.context.expect_page() as opened:
        row.get_by_role("link", name="Open report").click()
    report = opened.value
    report.wait_for_load_state()
    report.screenshot(path=out / "15-evaluation-report.png", full_page=True)
    shots.append("15-evaluation-report")
    report.close()
    rows.nth(0).get_by_role("checkbox").check()
    rows.nth(1).get_by_role("checkbox").check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_timeout(1500)
    shot("16-evaluation-compare")

    page.goto(f"{base}/exports?model={job.fine_tuned_model}")
    page.get_by_label("Format", exact=True).select_option("gguf")
    page.get_by_role("button", name="Start export").click()
    page.wait_for_timeout(3000)
    shot("17-export-running")
    expect(page.locator("#exports tbody tr").first).to_contain_text("succeeded", timeout=1_800_000)
    shot("18-exports")
    return shots


def main() -> None:
    import openai
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--eval-examples", type=int, default=12)
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        server, base = start_server(scratch / "data", options.model)
        try:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=2)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGUMENTS)
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                console = ConsoleWatch(page)
                started = time.monotonic()
                shots = tour(page, base, options.out, scratch, client, options)
                browser.close()
            print(json.dumps({"screenshots": shots, "console_errors": console.errors,
                              "seconds": round(time.monotonic() - started)}), flush=True)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
