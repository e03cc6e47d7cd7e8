"""Exports and evaluations started from the dashboard: a server task each, with its progress, its download
or its report, and scores of several evaluations compared on one page — in a real browser."""

import io
import json
import tarfile

import httpx2 as httpx
import openai
import pytest
from playwright.sync_api import expect

from tests.dashboard.test_job_flow import wait_until
from tests.serving import API_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fine_tune(dashboard_server, support_conversations, tmp_path_factory):
    """A fine-tuned model of the dashboard's server, and a held-out file uploaded beside it."""
    client = openai.OpenAI(base_url=dashboard_server.base_url, api_key=API_KEY, max_retries=0)
    folder = tmp_path_factory.mktemp("task-data")
    (folder / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:12]))
    (folder / "held-out.jsonl").write_text("".join(json.dumps(c) + "\n" for c in support_conversations[40:46]))
    job = client.fine_tuning.jobs.create(
        training_file=client.files.create(file=(folder / "train.jsonl").open("rb"), purpose="fine-tune").id,
        model="gpt-4o-mini-2024-07-18", hyperparameters={"n_epochs": 1})
    held_out = client.files.create(file=(folder / "held-out.jsonl").open("rb"), purpose="fine-tune")
    wait_until(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "succeeded", timeout=120, what="the job")
    return client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model, held_out.id


def test_an_export_runs_as_a_task_and_downloads(page, fine_tune):
    model, _ = fine_tune
    page.goto(f"{page.base}/models")
    page.get_by_role("link", name=f"Export {model}").click()
    expect(page.get_by_label("Fine-tuned model")).to_have_value(model)
    page.get_by_label("Format", exact=True).select_option("merged")
    page.get_by_role("button", name="Start export").click()
    row = page.locator("#exports tbody tr").first
    expect(row).to_contain_text("succeeded", timeout=120_000)
    expect(row).to_contain_text("ok")  # the export's own check: it answers as the fine-tune does
    with page.expect_download() as download:
        row.get_by_role("link").click()
    archive = tarfile.open(fileobj=io.BytesIO(open(download.value.path(), "rb").read()))
    names = {name.split("/", 1)[-1] for name in archive.getnames()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert page.console.errors == []


def test_evaluations_start_from_the_page_open_their_reports_and_compare(page, fine_tune, dashboard_server):
    model, held_out = fine_tune
    for evaluated in (model, "gpt-4o-mini-2024-07-18"):
        page.goto(f"{page.base}/evaluations?model={evaluated}")
        page.get_by_label("Held-out file").select_option(held_out)
        page.get_by_label("First N examples (optional)").fill("4")
        page.get_by_label("Max new tokens (optional)").fill("8")
        page.get_by_label("Forgetting check").uncheck()
        page.get_by_role("button", name="Start evaluation").click()
        expect(page.locator("#start-message")).to_contain_text("Started eval_")
    rows = page.locator("#evaluations tbody tr")
    expect(rows).to_have_count(2)
    for index in range(2):
        expect(rows.nth(index)).to_contain_text("succeeded", timeout=180_000)

    with page.context.expect_page() as opened:
        rows.nth(1).get_by_role("link", name="Open report").click()
    report = opened.value
    report.wait_for_load_state()
    expect(report.locator("section#verdict")).to_be_visible()
    expect(report.locator("h1")).to_have_text(f"Evaluation: {model}")  # named as the API names it
    expect(report.locator("p.meta").first).to_contain_text(f"held-out.jsonl ({held_out})")
    assert str(dashboard_server.data_dir) not in report.content()  # the server's folders are not the page's business
    report.close()

    for index in range(2):
        rows.nth(index).get_by_role("checkbox").check()
    page.get_by_role("button", name="Compare selected").click()
    evaluations = httpx.get(f"{dashboard_server.base_url}/tunelab/evaluations",
                            headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]
    systems = [(e["id"], name, system) for e in evaluations for name, system in e["result"]["systems"].items()]
    assert {name for _, name, _ in systems} >= {"fine_tuned", "base"}
    table = page.locator("#comparison-table")
    expect(table.locator("tbody tr")).to_have_count(len(systems))  # one row per model per evaluation
    scorers = {scorer["name"]: scorer for e in evaluations for scorer in e["result"]["scorers"]}
    for label in {scorer["label"] for scorer in scorers.values()}:
        expect(table.locator("thead")).to_contain_text(label)  # named as the report names them
    for evaluation_id, name, system in systems:
        row = table.locator("tbody tr", has_text=evaluation_id).filter(has_text=name.replace("_", " ")).first
        scorer_name, score = next(iter(system["scores"].items()))
        scale, places = (100, 0) if scorers[scorer_name]["fraction"] else (1, 1)
        low, high = (f"{scale * bound:.{places}f}" for bound in score["ci95"])
        expect(row).to_contain_text(f"{scale * score['mean']:.1f} ({low}–{high})")  # as the report writes it
    page.reload()  # the comparison is in the URL
    expect(page.locator("#comparison-table tbody tr")).to_have_count(len(systems))
    assert page.console.errors == []
