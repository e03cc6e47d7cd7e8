"""Every page of the dashboard checked with axe-core (0 serious or critical violations), readable at 1280 and
390 pixels wide (nothing wider than the window but the tables, which scroll in their own box), every control
reachable by keyboard, and no error in the browser's console."""

import json

import openai
import pytest
from axe_playwright_python.sync_playwright import Axe

from tests.dashboard.test_job_flow import wait_until
from tests.serving import API_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pages(dashboard_server, support_conversations, tmp_path_factory):
    """Every page's path, with a finished job, a file, a fine-tune, an evaluation and an export to show."""
    client = openai.OpenAI(base_url=dashboard_server.base_url, api_key=API_KEY, max_retries=0)
    path = tmp_path_factory.mktemp("a11y") / "train.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:12]))
    file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4o-mini-2024-07-18",
                                         hyperparameters={"n_epochs": 1}, suffix="a11y")
    wait_until(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "succeeded", timeout=120, what="the job")
    model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    return ["/jobs", "/jobs/new", f"/jobs/{job.id}", "/files", f"/files/{file.id}", "/models",
            f"/playground?models={model},gpt-4o-mini-2024-07-18", f"/evaluations?model={model}",
            f"/exports?model={model}"]


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_passes_axe_and_fits_the_window(page, pages, width):
    page.set_viewport_size({"width": width, "height": 900})
    axe = Axe()
    for path in pages:
        page.goto(f"{page.base}{path}")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(300)  # the page's script has drawn what it read
        results = axe.run(page)
        serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
        assert serious == [], (path, width, [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3])
                                             for v in serious])
        overflow = page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => !e.closest('.table-wrap') && e.getBoundingClientRect().right > window.innerWidth + 1)
            .map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className).slice(0, 5)""")
        assert overflow == [], (path, width, overflow)
    assert page.console.errors == []


def test_every_control_is_labelled_and_reachable_by_keyboard(page, pages):
    for path in pages:
        page.goto(f"{page.base}{path}")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(300)
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.outerHTML.slice(0, 80))""")
        assert unlabelled == [], (path, unlabelled)
        controls = page.evaluate("""() => [...document.querySelectorAll('a[href], input:not([type=hidden]), select, textarea, button')]
            .filter(e => !e.disabled && e.offsetParent !== null).length""")
        reached = set()
        page.locator("body").focus()
        for _ in range(controls + 5):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("document.activeElement.outerHTML.slice(0, 120)"))
        assert len(reached) >= controls, (path, controls, len(reached))
    assert page.console.errors == []
