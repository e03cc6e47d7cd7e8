"""The dashboard in a real browser, as a user goes through it: data checked before it is stored (a bad line
named), a job created from the page, its loss chart gaining points while it trains, the page's connection
cut mid-job and the missed points replayed on reconnecting, and a refresh showing the same state."""

import json
import time

import openai
import pytest
from playwright.sync_api import expect

from tests.dashboard.browser import ConsoleWatch, set_tab_hidden
from tests.serving import API_KEY

pytestmark = pytest.mark.slow


def points(page) -> int:
    return int(page.get_attribute("#loss-chart", "data-points"))


def settled_steps(client, job_id: str) -> int | None:
    """How many steps a stopped job recorded, once a second passes without another (the step under way when it
    was paused is still recorded); None while they still change."""
    def counted() -> int:
        return sum(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data)

    first = counted()
    time.sleep(1)
    return first if counted() == first else None


def wait_until(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_job_from_upload_to_replayed_curves(page, dashboard_server, proxy, support_conversations, tmp_path):
    client = openai.OpenAI(base_url=dashboard_server.base_url, api_key=API_KEY, max_retries=0)
    bad = [json.dumps(c) for c in support_conversations[:12]]
    bad[2] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})  # no content
    (tmp_path / "bad.jsonl").write_text("\n".join(bad) + "\n")
    (tmp_path / "good.jsonl").write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:20]))

    # A file with a bad line: the check names the line and the field, and nothing can be uploaded.
    page.goto(f"{page.base}/jobs/new")
    page.get_by_label("Or upload a new one").set_input_files(tmp_path / "bad.jsonl")
    error = page.locator("#data-report .findings li", has_text="Error").first
    expect(error).to_contain_text("line 3")
    expect(error).to_contain_text("messages[1]")
    expect(page.get_by_role("button", name="Upload", exact=True)).to_be_disabled()
    assert client.files.list().data == []  # checked, not stored

    # A good one: its report (tokens, time), uploaded, chosen, and a job created from the page.
    page.get_by_label("Or upload a new one").set_input_files(tmp_path / "good.jsonl")
    expect(page.locator("#data-report")).to_contain_text("no errors, 20 examples")
    expect(page.locator("#data-report")).to_contain_text("Training here")
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("#data-report")).to_contain_text("Uploaded as file-")
    stored = client.files.list().data
    assert [f.filename for f in stored] == ["good.jsonl"]
    expect(page.get_by_label("Training file")).to_have_value(stored[0].id)
    expect(page.locator("[data-estimate='local']")).to_contain_text("epochs (auto)")
    page.get_by_label("n_epochs").fill("10")
    expect(page.locator("[data-estimate='local']")).to_contain_text("for 10 epochs × ")  # the estimate follows
    page.get_by_label("batch_size").fill("1")
    page.get_by_label("Suffix (optional)").fill("from-the-page")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(f"{page.base}/jobs/ftjob-*")
    job_id = page.url.rsplit("/", 1)[1]
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert (job.suffix, job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == ("from-the-page", 10, 1)

    # The loss chart gains points as it trains; then the job is paused from the page. A second tab of the job
    # goes to the background meanwhile (it lets its stream go) and is shown again at the end.
    seen = []
    wait_until(lambda: seen.append(points(page)) or seen[-1] >= 3, what="the first points of the loss chart")
    background = page.context.new_page()
    background.console = ConsoleWatch(background)
    background.goto(page.url)
    wait_until(lambda: points(background) >= 3, what="the second tab's points")
    set_tab_hidden(background, True)
    expect(background.locator("#live")).to_contain_text("Paused while this tab is in the background")
    wait_until(lambda: seen.append(points(page)) or seen[-1] > seen[-2], what="more points")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#job-status")).to_have_text("paused")
    wait_until(lambda: client.fine_tuning.jobs.retrieve(job_id).status == "paused", what="the pause")

    # The page's connection is cut; meanwhile the job is resumed (by a script) and trains to the end. First the
    # page shows every step the job made before it stopped (a busy machine's page may lag a few behind).
    wait_until(lambda: settled_steps(client, job_id) == points(page), timeout=30, what="the page to catch up")
    page.console.paused = True  # the dropped connection is this test's doing
    proxy.cut()
    before_cut = points(page)
    expect(page.locator("#live")).to_contain_text("reconnecting", timeout=10_000)
    client.fine_tuning.jobs.resume(job_id)
    wait_until(lambda: client.fine_tuning.jobs.retrieve(job_id).status == "succeeded", timeout=120, what="the job")
    assert points(page) == before_cut  # nothing arrived while cut off
    proxy.restore()
    total = 200  # 20 examples × 10 epochs, one per step
    wait_until(lambda: points(page) == total, timeout=30, what="the missed points")
    page.console.paused = False
    assert int(page.get_attribute("#live", "data-reconnects")) >= 1
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#live")).to_contain_text("finished", timeout=15_000)  # the stream ends, not reconnects
    steps = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data if e.type == "metrics"]
    assert {e.data["step"] for e in steps} == set(range(1, total + 1))
    final_loss = next(e.data["train_loss"] for e in steps if e.data["step"] == total)
    expect(page.locator("#loss-caption")).to_contain_text(f"{final_loss:.4f} at step {total}")

    # A refresh shows the same: every point, the status, the checkpoints, the timeline.
    page.reload()
    wait_until(lambda: points(page) == total, timeout=20, what="the curves after a refresh")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#checkpoints tbody tr")).to_have_count(3)  # the newest three are kept
    expect(page.locator("#timeline")).to_contain_text("Job paused")
    expect(page.locator("#timeline")).to_contain_text("Job resumed")
    expect(page.locator("#overview")).to_contain_text(job.model)

    # The tab in the background, shown again, catches up from where it stopped: every point, each event once.
    set_tab_hidden(background, False)
    wait_until(lambda: points(background) == total, timeout=20, what="the background tab's catching up")
    expect(background.locator("#job-status")).to_have_text("succeeded")
    expect(background.locator("#timeline li")).to_have_count(page.locator("#timeline li").count())
    assert background.console.errors == []

    # The list shows it, live, with its suffix and trained tokens.
    page.goto(f"{page.base}/jobs")
    row = page.locator(f"tr[data-job='{job_id}']")
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("from-the-page")
    assert page.console.errors == []


def test_a_checkpoint_side_by_side_with_its_base_in_the_playground(page, dashboard_server, support_conversations,
                                                                   tmp_path):
    client = openai.OpenAI(base_url=dashboard_server.base_url, api_key=API_KEY, max_retries=0)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:12]))
    job = client.fine_tuning.jobs.create(training_file=client.files.create(file=path.open("rb"), purpose="fine-tune").id,
                                         model="gpt-4o-mini-2024-07-18", hyperparameters={"n_epochs": 2})
    wait_until(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "succeeded", timeout=120, what="the job")

    page.goto(f"{page.base}/jobs/{job.id}")
    first = page.locator("#checkpoints tbody tr").last  # the oldest: a checkpoint, not the final model
    expect(first).to_contain_text("ckpt-step-")
    step = first.get_attribute("data-step")
    first.get_by_role("link", name="Chat with").click()
    page.wait_for_url(f"{page.base}/playground?models=*")
    checkpoint = page.get_by_label("Model 1").input_value()
    assert checkpoint.endswith(f":ckpt-step-{step}")
    expect(page.get_by_label("Model 2 (optional)")).to_have_value("gpt-4o-mini-2024-07-18")
    page.get_by_label("System prompt (optional)").fill("You are the support assistant.")
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Message").fill("Where is my order?")
    page.get_by_role("button", name="Send to every model").click()
    replies = page.locator("li.reply[data-done='true']")
    expect(replies).to_have_count(2, timeout=60_000)
    for model in (checkpoint, "gpt-4o-mini-2024-07-18"):
        reply = page.locator(f"section[data-model='{model}'] li.reply")
        assert int(reply.get_attribute("data-chunks")) > 1  # streamed, piece by piece
        greedy = client.chat.completions.create(model=model, max_tokens=12, temperature=0, messages=[
            {"role": "system", "content": "You are the support assistant."},
            {"role": "user", "content": "Where is my order?"}]).choices[0].message.content
        assert greedy.strip() and reply.locator(".reply-text").text_content().strip() == greedy.strip()  # as a script gets it

    page.reload()  # the conversation stays with the tab
    expect(page.locator("li.reply")).to_have_count(2)
    assert page.console.errors == []
