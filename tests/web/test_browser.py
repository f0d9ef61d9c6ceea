"""The widget in a real headless browser (Debian's chromium driven by Playwright), against the
real adapter, dialogue manager, Redis and vLLM engine.

What a visitor does: open the chat from the keyboard, type, watch the answer being written,
reload and find the conversation, vote on an answer. The demo model has random weights, so
the test checks structure and the text's equality with what Parley saved, never words.
Confirm / Cancel for a write action runs against the scripted stand-in engine instead (its
decision is the model's part), so that test is not in the engine tier. So does the Markdown of
answers (a scripted answer with every construct and a hostile part, streamed a word at a time),
and the renderer on its own, construct by construct, with a person's reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright, expect

from adapters.web.tokens import conversation_id
from bot import messages
from bot.config import HandoffSettings
from tests.handoff.conftest import DEAD_LLM, SUPPORT, quoted, serving_web_and_slack
from tests.slack.conftest import fake_slack, slack_settings  # noqa: F401 - the fake Slack fixture
from tests.standin import ScriptedEngine
from tests.web.conftest import web_settings

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


# The text an answer's bubble shows for Markdown `text` (the widget's own renderer).
SHOWN_AS = "(text) => window.ParleyChat.markdown(text).textContent"


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


@pytest.mark.engine
async def test_chat_in_the_browser_stream_reload_history_feedback(stack_for, engine, browser):
    SCREENSHOT.unlink(missing_ok=True)
    async with stack_for(engine, llm={"max_tokens": 128}) as stack:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        frames: list[dict] = []  # what the widget's socket received, in order
        page.on("websocket", lambda ws: ws.on("framereceived", lambda data: frames.append(json.loads(data))))
        await page.goto(stack.base + "/")
        await open_with_keyboard(page)
        log = page.get_by_role("log", name=T["conversation"])
        await expect(log).to_have_attribute("aria-live", "polite")
        await expect(log.locator(".msg.bot").first).to_have_text(f"Parley: {web_settings().greeting}")

        await page.keyboard.type("How do I return a parcel?")
        await page.keyboard.press("Enter")
        await expect(log.locator(".msg.user")).to_have_text("You: How do I return a parcel?")
        feedback = log.get_by_role("group", name=T["feedback"])
        await expect(feedback).to_be_visible(timeout=180_000)  # shown once the answer is done

        [visitor] = await page.evaluate("""() => Object.keys(localStorage)
            .filter(k => k.endsWith(':token')).map(k => JSON.parse(localStorage[k]).split('.')[1])""")
        saved = [m.content for m in (await stack.answered(visitor)).messages]
        assert saved[0] == "How do I return a parcel?" and len(saved) == 2
        # The answer is Markdown: shown as the widget renders the saved text (random words may
        # hold a "*" or a "`"; the rendering itself is checked with a scripted answer below).
        rendered = await page.evaluate(SHOWN_AS, saved[1])
        answer = log.locator(".msg.bot[data-answer]")
        await expect(answer.locator(".text")).to_have_text(rendered, use_inner_text=False)
        assert await answer.get_attribute("aria-busy") is None  # screen readers read it now
        # Streamed: the engine's answer came as delta frames, before the done frame, that add up
        # to it. (How many steps the bubble is drawn in depends on how the CPU engine's tokens
        # bunch up on a loaded machine: the scripted Markdown test below checks the drawing.)
        answer_frames = [f for f in frames if f["type"] in ("delta", "done")]
        assert answer_frames[-1] == {"type": "done", "id": answer_frames[-1]["id"], "text": saved[1]}
        deltas = answer_frames[:-1]
        assert deltas and all(f["type"] == "delta" for f in deltas), answer_frames
        assert "".join(f["text"] for f in deltas) == saved[1]
        assert [f["at"] for f in deltas] == [sum(len(f["text"]) for f in deltas[:i]) for i in range(len(deltas))]

        # A reload continues the conversation: the panel is still open and shows the history.
        await page.reload()
        await expect(page.get_by_role("dialog", name="Parley")).to_be_visible()
        await expect(log.locator(".msg.user")).to_have_text("You: How do I return a parcel?")
        await expect(log.locator(".msg.bot .text").last).to_have_text(rendered, use_inner_text=False)

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


@pytest.mark.engine
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


@pytest.mark.engine
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


# The model's arguments go into what the buttons say: markup there must stay text.
HOSTILE = "Broken <img src=x onerror=window.parleyPwned=1> keyboard"
TICKETS = [
    {"calls": [{"action": "open_ticket", "arguments": {"subject": subject, "body": "Dead on arrival."}}]}
    for subject in (HOSTILE, "Second ticket")
]
ASK = "The keyboard from order A1001 arrived broken"  # routed to qa, where actions may answer


async def test_confirm_and_cancel_buttons_keyboard_settled_in_every_tab_hostile_text_inert(
    web_with_actions, sample_service, browser
):
    desk, _ = sample_service
    what = f'open a support ticket titled "{HOSTILE}"'
    async with web_with_actions(ScriptedEngine(decisions=list(TICKETS))) as stack:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        # The page's socket goes through the test, which keeps every choice frame the widget sends,
        # spoils the first (the server refuses it) and holds it until the buttons were seen disabled.
        sent: list[dict[str, object]] = []
        held = asyncio.Event()

        async def route(ws: WebSocketRoute) -> None:
            server = ws.connect_to_server()

            async def to_server(message: str | bytes) -> None:
                frame = json.loads(message) if isinstance(message, str) else None
                if isinstance(frame, dict) and frame.get("type") == "choice":
                    sent.append(frame)
                    if len(sent) == 1:
                        await held.wait()
                        message = json.dumps({**frame, "call": "not-a-call"})
                server.send(message)

            ws.on_message(to_server)

        await page.route_web_socket(re.compile(r"/ws$"), route)
        await page.goto(stack.base + "/")
        await page.get_by_role("button", name=f"{T['open']}: Parley").click()
        log = page.get_by_role("log", name=T["conversation"])
        # A second tab of the same visitor (the same browser profile: the same token).
        other = await context.new_page()
        await other.goto(stack.base + "/")
        await other.get_by_role("button", name=f"{T['open']}: Parley").click()
        other_log = other.get_by_role("log", name=T["conversation"])
        await expect(other_log.locator(".msg.bot").first).to_be_visible()

        await page.keyboard.type(ASK)
        await page.keyboard.press("Enter")
        choice = log.get_by_role("group", name=what)  # named by what it will do
        await expect(choice).to_be_visible(timeout=60_000)
        # Under the answer that asks, the call in words as plain text: no element made of it.
        answer = log.locator(".msg.bot[data-answer]", has=page.locator(".choice"))
        asks = await page.evaluate(SHOWN_AS, messages.confirm_action(what, 10))  # its *yes* and *no* in italics
        assert "*" not in asks and "<img src=x" in asks
        await expect(answer.locator(".text")).to_have_text(asks, use_inner_text=False)
        await expect(choice.locator(".what")).to_have_text(what, use_inner_text=False)
        images = "document.querySelector('#parley-chat').shadowRoot.querySelectorAll('img').length"
        assert await page.evaluate(images) == 0
        confirm = choice.get_by_role("button", name=messages.CONFIRM_BUTTON, exact=True)
        cancel = choice.get_by_role("button", name=messages.CANCEL_BUTTON, exact=True)
        await expect(confirm).to_be_enabled()
        await expect(cancel).to_be_enabled()
        other_choice = other_log.get_by_role("group", name=what)
        await expect(other_choice.get_by_role("button")).to_have_count(2)

        # From the keyboard: focus Confirm, Enter. The buttons wait, disabled, for the answer;
        # this press is refused (the test spoiled it), so they are offered again.
        await confirm.focus()
        await page.keyboard.press("Tab")  # real buttons: in the tab order, one after the other
        await expect(cancel).to_be_focused()
        await page.keyboard.press("Shift+Tab")
        await expect(confirm).to_be_focused()
        await page.keyboard.press("Enter")
        await expect(confirm).to_be_disabled()
        await expect(cancel).to_be_disabled()
        held.set()
        await expect(log.locator(".msg.notice").last).to_have_text(f"Parley: {messages.WEB_BAD_FRAME}")
        await expect(confirm).to_be_enabled()
        assert desk.tickets == {}

        await confirm.focus()
        await page.keyboard.press("Enter")
        await expect(log.locator(".msg.bot .text").filter(has_text="Done: open_ticket.")).to_be_visible(timeout=60_000)
        # Settled, in both tabs: the outcome in the buttons' place.
        for group in (choice, other_choice):
            await expect(group.get_by_role("status")).to_have_text(messages.action_settled("confirmed", "you"))
            await expect(group.get_by_role("button")).to_have_count(0)
        assert [t["subject"] for t in desk.tickets.values()] == [HOSTILE]
        assert [(f["choice"], f["call"] == sent[0]["call"]) for f in sent] == [("confirm", True), ("confirm", True)]
        assert all(re.fullmatch(r"[0-9a-f]{32}", str(f["id"])) for f in sent) and sent[0]["id"] != sent[1]["id"]
        assert await page.evaluate("window.parleyPwned") is None

        # A reload shows the settled offer under its answer; an offer past its time, disabled.
        await page.get_by_role("textbox", name=T["input_label"]).focus()
        await page.keyboard.type(ASK)
        await page.keyboard.press("Enter")
        second = log.get_by_role("group", name='open a support ticket titled "Second ticket"')
        await expect(second.get_by_role("button")).to_have_count(2, timeout=60_000)
        await page.evaluate("""() => {
            const key = Object.keys(localStorage).find(k => k.endsWith(':offers'));
            const offers = JSON.parse(localStorage[key]);
            offers[offers.length - 1].expires = Date.now() / 1000 - 1;
            localStorage[key] = JSON.stringify(offers);
        }""")
        await page.reload()
        await expect(choice.get_by_role("status")).to_have_text(messages.action_settled("confirmed", "you"))
        await expect(choice.get_by_role("button")).to_have_count(0)
        await expect(second.get_by_role("button")).to_have_count(2)
        for button in await second.get_by_role("button").all():
            await expect(button).to_be_disabled()
        await expect(second.get_by_role("status")).to_have_text(messages.action_settled("expired", "you"))
        assert len(desk.tickets) == 1
        await context.close()


# -- Markdown in answers: rendered from DOM nodes, hostile text inert, streamed, copied, keyboard ----

FENCE = "`" * 3
MARKDOWN = "\n".join(
    [
        "# Returns",
        "",
        "You can return a parcel within **30 days**, or _sooner_ if *damaged*. Use `RET-42` as the code.",
        "A snake_case_name stays as it is.",
        "",
        "- Print the label",
        "- Drop it at [the post office](https://post.example/find?q=1)",
        "- Questions? [Write to us](mailto:returns-desk)",  # a whole address: moderation redacts it
        "",
        "1. Pack it",
        "2. Send it",
        "",
        f"{FENCE}python",
        'print("hello <b>")',
        "x = 1",
        FENCE,
        "",
        "See https://shop.example/returns. Sources:",
        "[1] Returns policy (https://shop.example/policy)",
        "",
        "Hostile: <img src=x onerror=window.__pwned=1> [click](javascript:window.__pwned=1)"
        " <script>window.__pwned=1</script> [also](JAVASCRIPT:window.__pwned=1) [data](data:text/html,hi)",
    ]
)
# What each block of the answer shows (its textContent): the Markdown's marks gone, no word lost.
BLOCKS = [
    "Returns",
    "You can return a parcel within 30 days, or sooner if damaged. Use RET-42 as the code.\n"
    "A snake_case_name stays as it is.",
    "Print the labelDrop it at the post officeQuestions? Write to us",
    "Pack itSend it",
    f'print("hello <b>")\nx = 1{T["copy"]}',
    "See https://shop.example/returns. Sources:\n[1] Returns policy (https://shop.example/policy)",
    "Hostile: <img src=x onerror=window.__pwned=1> click <script>window.__pwned=1</script> also data",
]
CODE = 'print("hello <b>")\nx = 1'

# Records, while the answer streams, whether an unterminated code block was ever shown open.
WATCH_OPEN_FENCE = """() => {
  window.__openFence = false;
  const root = document.querySelector('#parley-chat').shadowRoot;
  new MutationObserver(() => {
    if (root.querySelector('.msg.bot[data-answer] .codeblock.open pre code')) window.__openFence = true;
  }).observe(root, { subtree: true, childList: true });
}"""

# The answer's DOM, read in the page: what each construct became.
READ_ANSWER = """() => {
  const root = document.querySelector('#parley-chat').shadowRoot;
  const text = root.querySelector('.msg.bot[data-answer] .text');
  const all = (sel) => [...text.querySelectorAll(sel)];
  return {
    blocks: [...text.children].map(c => c.tagName.toLowerCase() + (c.className ? '.' + c.className : '')),
    blockText: [...text.children].map(c => c.textContent),
    strong: all('strong').map(n => n.textContent),
    em: all('em').map(n => n.textContent),
    code: all('p code').map(n => n.textContent),
    pre: all('pre > code').map(n => n.textContent),
    lang: all('.codeblock').map(n => n.getAttribute('data-lang')),
    ul: all('ul > li').map(n => n.textContent),
    ol: all('ol > li').map(n => n.textContent),
    links: all('a').map(a => [a.textContent, a.getAttribute('href'), a.getAttribute('rel'), a.getAttribute('target')]),
    inert: all('.inert-link').map(n => n.textContent),
    elements: [...root.querySelectorAll('img, script, iframe, object, embed')].length,
    pwned: typeof window.__pwned,
  };
}"""


async def test_markdown_answer_rendered_hostile_inert_streamed_copied_by_keyboard(web_with_actions, browser):
    async with web_with_actions(ScriptedEngine(MARKDOWN, token_delay=0.03)) as stack:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.base)
        page = await context.new_page()
        await page.goto(stack.base + "/")
        await page.get_by_role("button", name=f"{T['open']}: Parley").click()
        log = page.get_by_role("log", name=T["conversation"])
        await expect(log.locator(".msg.bot").first).to_be_visible()
        # No support desk here: no "Talk to a person" button.
        await expect(page.get_by_role("button", name=T["person"])).to_be_hidden()
        await page.evaluate(WATCH_ANSWER)
        await page.evaluate(WATCH_OPEN_FENCE)
        await page.keyboard.type(f"{ASK} **twice**")
        await page.keyboard.press("Enter")
        # The visitor's own words stay plain text: no Markdown made of them.
        await expect(log.locator(".msg.user")).to_have_text(f"You: {ASK} **twice**")
        assert await log.locator(".msg.user strong").count() == 0
        await expect(log.get_by_role("group", name=T["feedback"])).to_be_visible(timeout=60_000)

        seen = await page.evaluate(READ_ANSWER)
        assert seen["blockText"] == BLOCKS
        assert seen["blocks"] == ["p.heading", "p", "ul", "ol", "div.codeblock", "p", "p"]
        assert seen["strong"] == ["Returns", "30 days"]
        assert seen["em"] == ["sooner", "damaged"]
        assert seen["code"] == ["RET-42"]
        assert seen["pre"] == [CODE] and seen["lang"] == ["python"]
        assert seen["ul"] == ["Print the label", "Drop it at the post office", "Questions? Write to us"]
        assert seen["ol"] == ["Pack it", "Send it"]
        safe = ["noopener noreferrer", "_blank"]
        assert seen["links"] == [
            ["the post office", "https://post.example/find?q=1", *safe],
            ["Write to us", "mailto:returns-desk", *safe],
            ["https://shop.example/returns", "https://shop.example/returns", *safe],
            ["https://shop.example/policy", "https://shop.example/policy", *safe],  # a QA citation
        ]
        # The hostile part: text, never elements; links to javascript: or data: are their words only.
        assert seen["inert"] == ["click", "also", "data"]
        assert seen["elements"] == 0 and seen["pwned"] == "undefined"

        # Streamed: drawn in several steps, an unterminated code block shown open on the way,
        # and at the end exactly what the done frame's text renders as.
        shown = await page.evaluate("window.__shown")
        assert len([s for s in shown if s]) >= 3, shown
        assert await page.evaluate("window.__openFence") is True
        assert shown[-1] == "".join(BLOCKS)
        answer = log.locator(".msg.bot[data-answer]")
        assert await answer.get_attribute("aria-busy") is None

        # The keyboard: Tab from the log goes through the links, the code and its Copy button,
        # then the thumbs; inert links are not in the tab order.
        await log.focus()
        order = []
        for _ in range(12):
            await page.keyboard.press("Tab")
            order.append(
                await page.evaluate("""() => {
                const a = document.querySelector('#parley-chat').shadowRoot.activeElement;
                return a.tagName.toLowerCase() + ':' + (a.getAttribute('aria-label') || a.textContent);
            }""")
            )
            if order[-1].startswith("textarea"):
                break
        assert order[:8] == [
            "a:the post office",
            "a:Write to us",
            f"pre:{CODE}",
            f"button:{T['copy_code']}",
            "a:https://shop.example/returns",
            "a:https://shop.example/policy",
            f"button:{T['helpful']}",
            f"button:{T['not_helpful']}",
        ], order
        copy = answer.get_by_role("button", name=T["copy_code"])
        await copy.focus()
        await page.keyboard.press("Enter")
        copied = answer.get_by_role("button", name=T["copied"])
        await expect(copied).to_have_text(T["copied"])
        assert await page.evaluate("navigator.clipboard.readText()") == CODE

        # After a reload the answer comes from the history: drawn the same way.
        await page.reload()
        await expect(log.locator(".msg.bot .text").last).to_have_text("".join(BLOCKS), use_inner_text=False)
        again = await page.evaluate(READ_ANSWER.replace(".msg.bot[data-answer] .text", ".msg.bot:last-child .text"))
        assert {k: again[k] for k in ("blockText", "links", "inert", "elements", "pwned")} == {
            k: seen[k] for k in ("blockText", "links", "inert", "elements", "pwned")
        }
        await context.close()


# The renderer alone (`ParleyChat.markdown`), construct by construct: Markdown in, HTML of the nodes out.
RENDER = """(text) => {
  const box = document.createElement('div');
  box.appendChild(window.ParleyChat.markdown(text));
  box.querySelectorAll('.codeblock').forEach(b => b.querySelector('button.copy').remove());
  box.querySelectorAll('a').forEach(a => {
    if (a.rel !== 'noopener noreferrer' || a.target !== '_blank') throw new Error('unsafe link ' + a.outerHTML);
    a.removeAttribute('rel'); a.removeAttribute('target');
  });
  return box.innerHTML;
}"""
A = '<a href="{}">{}</a>'
PRE = '<pre tabindex="0"><code>{}</code></pre>'
RENDERED = [
    ("plain words", "<p>plain words</p>"),
    ("one\ntwo\n\nthree", "<p>one\n<br>two</p><p>three</p>"),
    (
        "**b** *i* __b__ _i_ ***bi***",
        "<p><strong>b</strong> <em>i</em> <strong>b</strong> <em>i</em> <strong><em>bi</em></strong></p>",
    ),
    ("**open and *nested* text**", "<p><strong>open and <em>nested</em> text</strong></p>"),
    ("**not closed", "<p>**not closed</p>"),
    ("a * b * c and 2*3*4", "<p>a * b * c and 2<em>3</em>4</p>"),
    ("snake_case_name and _x_", "<p>snake_case_name and <em>x</em></p>"),
    ("\\*not em\\* and \\`tick\\`", "<p>*not em* and `tick`</p>"),
    ("`a*b*c` and ``x ` y``", "<p><code>a*b*c</code> and <code>x ` y</code></p>"),
    ("`unclosed *em*", "<p>`unclosed <em>em</em></p>"),
    ("### Title *x*", '<p class="heading"><strong>Title <em>x</em></strong></p>'),
    ("- a\n* b\n+ c", "<ul><li>a</li><li>b</li><li>c</li></ul>"),
    ("3. c\n4) d\n   more", '<ol start="3"><li>c</li><li>d\n<br>more</li></ol>'),
    ("text\n- item", "<p>text</p><ul><li>item</li></ul>"),
    (
        f"{FENCE}js\nlet a = '<b>';\n{FENCE}\nafter",
        '<div class="codeblock" data-lang="js">' + PRE.format("let a = '&lt;b&gt;';") + "</div><p>after</p>",
    ),
    (f"{FENCE}\nstill streaming", '<div class="codeblock open">' + PRE.format("still streaming") + "</div>"),
    (f"~~~~\n{FENCE}\n~~~~", '<div class="codeblock">' + PRE.format(FENCE) + "</div>"),
    ("[x](https://e.example/a_(b))", "<p>" + A.format("https://e.example/a_(b)", "x") + "</p>"),
    ("[**x**](<https://e.example>)", "<p>" + A.format("https://e.example/", "<strong>x</strong>") + "</p>"),
    ("[a [b](http://e.example)", "<p>[a " + A.format("http://e.example/", "b") + "</p>"),
    ("[a](no spaces allowed)", "<p>[a](no spaces allowed)</p>"),
    (
        "(see https://e.example/x), or https://e.example/y.",
        "<p>(see "
        + A.format("https://e.example/x", "https://e.example/x")
        + "), or "
        + A.format("https://e.example/y", "https://e.example/y")
        + ".</p>",
    ),
    ("https:// alone and xhttps://e.example", "<p>https:// alone and xhttps://e.example</p>"),
    # Never a link: not http(s) or mailto, relative, or hidden behind case, spaces or entities.
    ("[a](javascript:alert(1))", '<p><span class="inert-link">a</span></p>'),
    ("[a](JavaScript:alert(1))", '<p><span class="inert-link">a</span></p>'),
    ("[a](jav&#x09;ascript:alert(1))", '<p><span class="inert-link">a</span></p>'),
    (
        "[a](vbscript:x) [b](data:text/html,x) [c](//e.example) [d](/relative)",
        '<p><span class="inert-link">a</span> <span class="inert-link">b</span> '
        '<span class="inert-link">c</span> <span class="inert-link">d</span></p>',
    ),
    (
        "<img src=x onerror=alert(1)><script>alert(1)</script>",
        "<p>&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(1)&lt;/script&gt;</p>",
    ),
    ("A & B < C", "<p>A &amp; B &lt; C</p>"),
]

# Text made to be slow for a scanner that looks ahead again from every character (quadratic: minutes
# at these sizes). A linear one renders each in well under a second; the test allows 20.
PATHOLOGICAL = [
    "*a " * 150_000,
    "**a _b " * 70_000,
    "***a " * 100_000,
    "a_" * 200_000,
    "[" * 400_000 + "]",
    "[a](" * 120_000,
    "](" * 200_000,
    "[x](" + "(" * 400_000,
    "`" + "``x" * 150_000,
    "http://e" * 60_000,
    "- a\n" * 100_000,
    "```\n" * 100_000,
]

# A person's reply, as the server relays it (`adapters/web/sink.py`), put on the page's socket by the test.
AGENT_FRAME = {
    "type": "message",
    "id": "m-agent-1",
    "reply_to": "r-agent-1",
    "text": "Hi, **Ann** here. See https://shop.example/returns <img src=x onerror=window.__pwned=1>",
    "kind": "agent",
    "agent": messages.agent_label("Ann"),
}


async def test_markdown_renderer_construct_by_construct_and_a_persons_reply(stack_for, browser):
    async with stack_for() as stack:
        context = await browser.new_context()
        page = await context.new_page()
        sockets: list[WebSocketRoute] = []

        async def route(ws: WebSocketRoute) -> None:
            ws.connect_to_server()
            sockets.append(ws)

        await page.route_web_socket(re.compile(r"/ws$"), route)
        await page.goto(stack.base + "/")
        await page.get_by_role("button", name=f"{T['open']}: Parley").click()
        log = page.get_by_role("log", name=T["conversation"])
        await expect(log.locator(".msg.bot").first).to_be_visible()

        for source, html in RENDERED:
            assert await page.evaluate(RENDER, source) == html, source
        for source in PATHOLOGICAL:
            async with asyncio.timeout(20):
                assert await page.evaluate("(t) => window.ParleyChat.markdown(t).childNodes.length", source) > 0

        # A person's reply: marked as theirs (name, icon, its own bubble), Markdown shown, markup inert.
        sockets[-1].send(json.dumps(AGENT_FRAME))
        reply = log.locator(".msg.agent")
        await expect(reply).to_be_visible()
        await expect(reply.locator(".agent-name")).to_have_text(f"{messages.agent_label('Ann')}: ")
        assert await reply.locator(".agent-name svg[aria-hidden='true']").count() == 1
        await expect(reply.locator(".text strong")).to_have_text("Ann")
        link = reply.get_by_role("link", name="https://shop.example/returns")
        await expect(link).to_have_attribute("rel", "noopener noreferrer")
        await expect(link).to_have_attribute("target", "_blank")
        assert await reply.locator("img").count() == 0
        assert await page.evaluate("typeof window.__pwned") == "undefined"
        border = await reply.locator(".text").evaluate("n => getComputedStyle(n).borderTopStyle")
        assert border == "solid"  # not the bot's bubble
        await context.close()


async def test_talk_to_a_person_with_the_keyboard_opens_a_ticket(make_settings, fake_slack, browser):
    fake_slack.add_channel(SUPPORT, "support", private=True)
    settings = make_settings(
        llm_url=DEAD_LLM,  # the press is explicit: no model is asked
        web=web_settings(),
        slack=slack_settings(fake_slack),
        handoff=HandoffSettings(_env_file=None, slack_channel=SUPPORT),
    )
    async with serving_web_and_slack(settings, fake_slack) as (web_stack, _):
        page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
        await page.goto(web_stack.base + "/")
        await open_with_keyboard(page)
        person = page.get_by_role("button", name=T["person"])
        await expect(person).to_be_visible()
        await person.focus()
        await page.keyboard.press("Enter")
        log = page.get_by_role("log", name=T["conversation"])
        await expect(log.locator(".msg.user")).to_have_text(f"You: {messages.ASK_FOR_PERSON}")
        await expect(log.locator(".msg.bot").last).to_contain_text(messages.HANDED_OFF)
        await expect(page.get_by_role("textbox", name=T["input_label"])).to_be_focused()  # type on at once
        head = await fake_slack.wait_for(lambda: next(iter(fake_slack.in_thread(SUPPORT, None)), None))
        [transcript] = await fake_slack.wait_for(lambda: fake_slack.in_thread(SUPPORT, head.ts))
        assert quoted("Customer", messages.ASK_FOR_PERSON) in transcript.text
