"""The web UI in headless Chromium (Debian's `chromium`, driven by Playwright; no browser download).

The chat model is scripted to answer from whatever memories the server put in
its system prompt, so "the reply uses the remembered order number" can only
pass if memory really went from session 1, through extraction, into session 2.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StartServer

from retain.llm.base import Messages
from retain.testing import ScriptedLLM

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("RETAIN_SCREENSHOTS")  # a directory: save the README screenshots there


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("RETAIN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"chromium is not installed at {CHROMIUM} (scripts/test installs it with apt)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def answer_from_memory(messages: Messages) -> str:
    system = messages[0]["content"]
    remembered = [line[2:] for line in system.splitlines() if line.startswith("- ")]
    if remembered:
        return "Welcome back! About your order: " + remembered[0].split(") ", 1)[-1]
    return "Sorry to hear that. I have noted it."


def extraction(fact: str) -> dict[str, Any]:
    return {"operations": [{"op": "ADD", "id": None, "text": fact, "category": "context", "reason": "user said so"}]}


def wait_for(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_support_chat_remembers_across_sessions_and_the_inspector_shows_it(
    start_server: StartServer, browser: Any
) -> None:
    extractor, chat = ScriptedLLM(), ScriptedLLM()
    live = start_server(llm=extractor, chat_llm=chat, in_process_worker=True, worker_poll_seconds=0.1)
    extractor.enqueue(extraction("User's order #4417 arrived damaged"))
    chat.enqueue(answer_from_memory, answer_from_memory)
    page = browser.new_page()
    page.goto(f"{live.url}/#key={live.acme}")
    page.get_by_label("User id").first.fill("ann")

    page.get_by_label("Message").fill("Hi, my order #4417 arrived damaged.")
    page.keyboard.press("Enter")
    assistant = page.locator(".turn.assistant .bubble").last
    assistant.filter(has_text="I have noted it").wait_for()
    wait_for(lambda: live.memory.for_tenant("acme").get_all(user_id="ann").results)

    page.get_by_role("button", name="New session").click()
    assert page.locator(".turn").count() == 0, "a new session clears the screen"
    page.get_by_label("Message").fill("any update on my order?")
    page.get_by_role("button", name="Send").click()
    page.locator(".turn.assistant .bubble").filter(has_text="4417").wait_for()
    assert "order #4417 arrived damaged" in page.locator(".turn.assistant .bubble").last.inner_text()
    assert "4417" in page.locator("#remembered").inner_text(), "the remembered panel shows what was injected"
    if SCREENSHOTS:
        page.screenshot(path=f"{SCREENSHOTS}/chat.png", full_page=True)

    # The inspector: the memory, its history with the reason, and its source message.
    page.get_by_role("link", name="Memory inspector").click()
    page.locator("#inspect-user").fill("ann")
    page.get_by_role("button", name="Load memories").click()
    memory = page.locator(".memory").filter(has_text="User's order #4417 arrived damaged")
    memory.wait_for()
    memory.get_by_role("button", name="History and sources").click()
    details = memory.locator(".details")
    details.locator(".timeline li").first.wait_for()
    assert "ADD" in details.inner_text() and "because: user said so" in details.inner_text()
    assert "Hi, my order #4417 arrived damaged." in details.locator(".sources").inner_text()

    # A correction supersedes the old version, which shows struck through.
    record = live.memory.for_tenant("acme").get_all(user_id="ann").results[0]
    live.memory.for_tenant("acme").update(record.id, "User's order #4417 was replaced", reason="replacement sent")
    page.get_by_label("Show superseded").check()
    page.locator(".memory.superseded del").filter(has_text="arrived damaged").wait_for()
    current = page.locator(".memory:not(.superseded)").filter(has_text="was replaced")
    current.get_by_role("button", name="History and sources").click()
    current.locator(".timeline li").nth(1).wait_for()
    timeline = current.locator(".timeline").inner_text()
    assert timeline.index("ADD") < timeline.index("UPDATE") and "replacement sent" in timeline

    # The search playground shows each signal's score.
    page.get_by_label("Query").fill("order replaced")
    page.get_by_role("button", name="Search", exact=True).click()
    row = page.locator("#search-results tbody tr").first
    row.wait_for()
    assert "was replaced" in row.inner_text() and row.locator("td").count() == 7
    if SCREENSHOTS:
        page.screenshot(path=f"{SCREENSHOTS}/inspector.png", full_page=True)

    # Delete asks first; dismissing keeps the memory, accepting removes it.
    page.once("dialog", lambda dialog: dialog.dismiss())
    current.get_by_role("button", name="Delete").click()
    assert page.locator(".memory:not(.superseded)").count() == 1
    page.once("dialog", lambda dialog: dialog.accept())
    current.get_by_role("button", name="Delete").click()
    page.locator("#memory-count").filter(has_text="0 current memories").wait_for()
    assert live.memory.for_tenant("acme").get_all(user_id="ann", include_superseded=True).results == []


def test_the_ui_works_by_keyboard_and_on_a_phone(start_server: StartServer, browser: Any) -> None:
    live = start_server(llm=None)
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(live.url)
    page.locator("#key-input").wait_for()
    assert page.locator("#key-form").is_visible(), "without a key the UI asks for one"
    page.get_by_label("API key").fill(live.acme)
    page.keyboard.press("Enter")
    page.locator("#llm-banner").filter(has_text="RETAIN_LLM=").wait_for()
    assert page.get_by_role("button", name="Send").is_disabled(), "no LLM: chat is off, and the banner says why"

    live.client(live.acme).post("/v1/memories", json={"messages": "I like tea", "user_id": "alice", "infer": False})
    page.goto(f"{live.url}/#inspector")
    page.locator("#inspect-user").focus()
    page.keyboard.press("Enter")  # submits the form from the keyboard
    page.locator(".memory").filter(has_text="I like tea").wait_for()
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    for control in page.locator("input, textarea").all():
        control_id = control.get_attribute("id")
        labelled = page.locator(f"label[for='{control_id}']").count() or control.evaluate("e => !!e.closest('label')")
        assert labelled, f"#{control_id} has no label"

    page.goto(f"{live.url}/docs")  # Swagger UI from the package, not a CDN
    page.locator(".opblock-summary-path").filter(has_text="/v1/memories/search").wait_for()
    context.close()


@pytest.mark.local_llm
def test_smoke_chat_with_the_real_local_model(start_server: StartServer, browser: Any) -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip('the local LLM is not installed: pip install -e ".[local]"')
    from retain.llm.local import LocalLLM

    live = start_server(llm=None, chat_llm=LocalLLM(max_tokens=48))
    page = browser.new_page()
    page.goto(f"{live.url}/#key={live.acme}")
    page.get_by_label("Message").fill("Hello! Please reply with one short sentence.")
    page.keyboard.press("Enter")
    page.locator(".turn.assistant .bubble:not(.streaming)").wait_for(timeout=240_000)
    reply = page.locator(".turn.assistant .bubble").inner_text()
    assert reply.strip() and "Could not reach" not in reply
