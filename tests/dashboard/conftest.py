"""A `tunelab serve` on the tests' tiny model, a headless Chromium, and a page signed in to the dashboard."""

import pytest

from tests.conftest import build_tiny_model
from tests.dashboard.browser import CHROMIUM_ARGUMENTS, ConsoleWatch, CuttableProxy, chromium_path
from tests.serving import API_KEY, Server


@pytest.fixture(scope="session")
def talking_tiny_model_dir(tmp_path_factory, support_conversations):
    """The tests' tiny model with smaller initial weights: its greedy replies are text (the usual tiny model's
    are newlines, which a chat reply strips to nothing), so a playground has something to show."""
    corpus = [m["content"] for c in support_conversations for m in c["messages"]]
    return build_tiny_model(tmp_path_factory.mktemp("talking-tiny-model"), corpus, initializer_range=0.02)


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory, talking_tiny_model_dir):
    running = Server(tmp_path_factory.mktemp("dashboard"), "--alias",
                     f"gpt-4o-mini-2024-07-18={talking_tiny_model_dir}", "--dtype", "fp32")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def proxy(dashboard_server):
    cuttable = CuttableProxy(dashboard_server.port)
    yield cuttable
    cuttable.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGUMENTS)
        yield launched
        launched.close()


def sign_in(page, base: str, key: str = API_KEY, then: str = "/jobs") -> None:
    page.goto(f"{base}{then}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}{then}")


@pytest.fixture()
def page(browser, proxy):
    """A fresh browser context (no cookies), signed in through the proxy; its console errors in page.console."""
    proxy.restore()  # a test that failed while it had the proxy cut must not fail the next one too
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.console = ConsoleWatch(opened)
    opened.base = f"http://127.0.0.1:{proxy.port}"
    sign_in(opened, opened.base)
    yield opened
    context.close()
