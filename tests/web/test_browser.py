"""The widget in a real headless browser (Debian's chromium driven by Playwright), against the
real adapter, dialogue manager, Redis and vLLM engine.

What a visitor does: open the chat from the keyboard, type, watch the answer being written,
reload and find the conversation, vote on an answer. The demo model has random weights, so
the test checks structure and the text's equality with what Parley saved, never words.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright, expect

from adapters.web.tokens import conversation_id
from bot import messages
from tests.web.conftest import web_settings

pytestmark = pytest.mark.engine

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SCREENSHOT = ARTIFACTS / "web-chat.png"
T = messages.WEB_WIDGET_TEXT

# Records every text the answer bubble shows, as the DOM changes (a poll from the test would miss steps).
WATCH_ANSWER = """() => {
  window.__shown = [];
  const root = document.querySelector('#parley-chat').shadowRoot;
  new MutationObserver(() => {
    const answer = root.querySelector('.msg.bot[data-answer] .text');
    const last = window.__shown[window.__shown.length - 1];
    if (answer && answer.textContent !== last) window.__shown.push(answer.textContent);
  }).observe(root, { subtree: true, childList: true, characterData: true });
}"""


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: tests/run.sh installs Debian's chromium")
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            await browser.close()


async def answer_id_of(page: Page, text: str) -> str:
    """The id the widget keeps for an answer (from its done frame), to vote on it after a reload."""
    return await page.evaluate(
        """(text) => {
        const key = Object.keys(localStorage).find(k => k.endsWith(':answers'));
        return JSON.parse(localStorage[key]).find(item => item[1] === text)[0];
    }""",
        text,
    )


async def open_with_keyboard(page: Page) -> None:
    launcher = page.get_by_role("button", name=f"{T['open']}: Parley")
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    for _ in range(5):  # Tab from the top of the page to the launcher
        await page.keyboard.press("Tab")
        if await launcher.evaluate("node => node.getRootNode().activeElement === node"):
            break
    else:
        raise AssertionError("the launcher is not reachable with Tab")
    await page.keyboard.press("Enter")
    await expect(launcher).to_have_attribute("aria-expanded", "true")
    await expect(page.get_by_role("dialog", name="Parley")).to_be_visible()
    await expect(page.get_by_role("textbox", name=T["input_label"])).to_be_focused()


async def test_chat_in_the_browser_stream_reload_history_feedback(stack_for, engine, browser):
    SCREENSHOT.unlink(missing_ok=True)
    async with stack_for(engine, llm={"max_tokens": 128}) as stack:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        await page.goto(stack.base + "/")
        await open_with_keyboard(page)
        log = page.get_by_role("log", name=T["conversation"])
        await expect(log).to_have_attribute("aria-live", "polite")
        await expect(log.locator(".msg.bot").first).to_have_text(f"Parley: {web_settings().greeting}")

        await page.evaluate(WATCH_ANSWER)
        await page.keyboard.type("How do I return a parcel?")
        await page.keyboard.press("Enter")
        await expect(log.locator(".msg.user")).to_have_text("You: How do I return a parcel?")
        feedback = log.get_by_role("group", name=T["feedback"])
        await expect(feedback).to_be_visible(timeout=180_000)  # shown once the answer is done

        [visitor] = await page.evaluate("""() => Object.keys(localStorage)
            .filter(k => k.endsWith(':token')).map(k => JSON.parse(localStorage[k]).split('.')[1])""")
        saved = [m.content for m in (await stack.answered(visitor)).messages]
        assert saved[0] == "How do I return a parcel?" and len(saved) == 2
        answer = log.locator(".msg.bot[data-answer]")
        await expect(answer.locator(".text")).to_have_text(saved[1], use_inner_text=False)
        assert await answer.get_attribute("aria-busy") is None  # screen readers read it now
        shown = await page.evaluate("window.__shown")
        assert shown[-1] == saved[1]
        grown = [s for s in shown if s]
        assert len(grown) >= 2, f"the answer appeared in one step, not streamed: {shown!r}"
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(grown))

        # A reload continues the conversation: the panel is still open and shows the history.
        await page.reload()
        await expect(page.get_by_role("dialog", name="Parley")).to_be_visible()
        await expect(log.locator(".msg.user")).to_have_text("You: How do I return a parcel?")
        await expect(log.locator(".msg.bot .text").last).to_have_text(saved[1], use_inner_text=False)

        helpful = log.get_by_role("button", name=T["helpful"], exact=True)
        await helpful.click()
        await expect(helpful).to_have_attribute("aria-pressed", "true")
        await expect(log.get_by_text(T["thanks"])).to_be_visible()
        answer_id = await answer_id_of(page, saved[1])
        assert answer_id.startswith(f"{conversation_id(visitor)}:")  # never the id in the token
        pattern = f"{stack.runtime.settings.redis.prefix}:seen:web:*:{answer_id}:feedback:*"
        async with asyncio.timeout(60):  # the 👍 reached the dialogue manager as a feedback turn on that answer
            while not [k async for k in stack.runtime.redis.scan_iter(match=pattern)]:
                await asyncio.sleep(0.1)

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT))
        await context.close()
    assert SCREENSHOT.stat().st_size > 10_000 and SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_narrow_screen_full_screen_panel_escape_returns_focus(stack_for, engine, browser):
    async with stack_for(engine, colour="#ffd43b", title="Help") as stack:
        context = await browser.new_context(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True)
        page = await context.new_page()
        await page.goto(stack.base + "/")
        launcher = page.get_by_role("button", name=f"{T['open']}: Help")
        await launcher.click()
        panel = page.get_by_role("dialog", name="Help")
        await expect(panel).to_be_visible()
        await expect(panel).to_have_attribute("aria-modal", "true")
        box = await panel.bounding_box()
        assert box is not None and (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 375, 667)
        # A light accent gets dark text, for contrast.
        colour = await panel.get_by_role("heading", name="Help").evaluate("node => getComputedStyle(node).color")
        assert colour == "rgb(17, 17, 17)"
        # Tab stays inside the full-screen dialog.
        for _ in range(6):
            await page.keyboard.press("Tab")
            assert await panel.evaluate("(node) => node.contains(node.getRootNode().activeElement)")
        await page.keyboard.press("Escape")
        await expect(panel).to_be_hidden()
        await expect(launcher).to_be_focused()
        await expect(launcher).to_have_attribute("aria-expanded", "false")
        await context.close()


@asynccontextmanager
async def customer_site(widget_url: Callable[[], str]) -> AsyncIterator[str]:
    """A customer's own page on another origin, embedding the widget with the one tag.
    (The widget's URL is asked for when the page is served: Parley starts after this site,
    whose origin goes into Parley's allowed origins.)"""

    async def page(_: web.Request) -> web.Response:
        return web.Response(
            content_type="text/html",
            text=(
                "<!doctype html><html lang='en'><head><title>Shop</title></head><body><h1>Our shop</h1>"
                f"<script src='{widget_url()}' async></script></body></html>"
            ),
        )

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_embedded_on_an_allowed_site_and_refused_on_another(stack_for, engine, browser, caplog):
    caplog.set_level(logging.WARNING, logger="adapters.web")
    widget = ""
    async with (
        customer_site(lambda: widget) as shop,
        customer_site(lambda: widget) as stranger,
        stack_for(engine, llm={"max_tokens": 16}, allowed_origins=[shop]) as stack,
    ):
        widget = stack.base + "/widget.js"
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(shop + "/")
        await page.get_by_role("button", name=f"{T['open']}: Parley").click()
        log = page.get_by_role("log", name=T["conversation"])
        await expect(log.locator(".msg.bot").first).to_have_text(f"Parley: {web_settings().greeting}")
        await page.keyboard.type("Do you ship abroad?")
        await page.keyboard.press("Enter")
        await expect(log.get_by_role("group", name=T["feedback"])).to_be_visible(timeout=180_000)

        other = await context.new_page()
        await other.goto(stranger + "/")
        await other.get_by_role("button", name=f"{T['open']}: Parley").click()
        await expect(other.get_by_role("status").filter(has_text=T["reconnecting"])).to_be_visible()
        assert await other.get_by_role("log", name=T["conversation"]).locator(".msg").count() == 0
        assert any(f"refused origin {stranger}" in r.getMessage() for r in caplog.records)
        await context.close()
