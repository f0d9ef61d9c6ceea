"""Handoff end to end: a web chat visitor, Parley serving the web chat and Slack at once (the
real web adapter and slack-bolt against the fake Slack), Redis, and the real vLLM engine
behind a recording proxy, so that the prompt the engine receives after the handoff can be
read. The demo model's words are random; nothing here asserts on them.

The visitor asks for a person -> a ticket thread appears in the Slack support channel with
the transcript -> a person replies in that thread (a signed Events API message) -> the reply
reaches the visitor's browser -> the person resolves (the Resolve button) -> the visitor's
next question is answered by the model, whose prompt holds the whole exchange.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

import adapters.slack
import adapters.web
from bot import messages
from bot.config import HandoffSettings, Settings
from bot.runtime import open_runtime
from bot.server import run_adapters
from tests.handoff.conftest import SUPPORT
from tests.routing.test_pipeline import proxy  # noqa: F401 - the recording proxy in front of the engine
from tests.slack.conftest import SlackStack, slack_settings
from tests.slack.fake import FakeSlack, block_action, message
from tests.web.conftest import WebStack, web_settings

pytestmark = pytest.mark.engine


@asynccontextmanager
async def serving_web_and_slack(settings: Settings, fake: FakeSlack) -> AsyncIterator[tuple[WebStack, SlackStack]]:
    """`parley serve` with the web chat and Slack, until the block ends; then the ordered shutdown."""
    async with open_runtime(settings) as runtime, aiohttp.ClientSession() as session:
        slack, web = adapters.slack.create(runtime), adapters.web.create(runtime)
        assert slack is not None and web is not None
        stop = asyncio.Event()
        server = asyncio.create_task(run_adapters(runtime, [slack, web], stop=stop))
        try:
            async with asyncio.timeout(120):
                while not (server.done() or (slack.ready.is_set() and web.ready.is_set())):
                    await asyncio.sleep(0.02)
            if server.done():
                server.result()
            yield WebStack(runtime, web, session), SlackStack(fake, runtime, slack, session)
        finally:
            stop.set()
            async with asyncio.timeout(120):
                await server


async def test_a_web_visitor_is_handed_to_a_person_in_slack_and_back(make_settings, proxy, fake_slack):  # noqa: F811
    fake_slack.add_user("UAGENT", "ann.k", display_name="Ann")
    settings = make_settings(
        llm_url=proxy.url, web=web_settings(), slack=slack_settings(fake_slack),
        handoff=HandoffSettings(_env_file=None, slack_channel=SUPPORT),
    )
    async with serving_web_and_slack(settings, fake_slack) as (web, slack):
        tab = await web.connect()

        # 1. The visitor asks for a person (routed by the embeddings, not the random-weight model).
        await tab.say("I want to talk to a person", id="msg-00000001")
        notice = await tab.next("message")
        assert notice["text"] == messages.HANDED_OFF

        # 2. A ticket thread with the transcript appears in the support channel.
        head = await fake_slack.wait_for(lambda: next(iter(fake_slack.in_thread(SUPPORT, None)), None))
        assert "*web*" in head.text and "`shop`" in head.text and tab.visitor in head.text
        [transcript] = await fake_slack.wait_for(lambda: fake_slack.in_thread(SUPPORT, head.ts))
        assert "*Customer:* I want to talk to a person" in transcript.text

        # 3. A person replies in that thread; the reply reaches the visitor's browser, with their name.
        await slack.deliver(message(SUPPORT, "Hi, I'm Ann. Your refund is on its way.", user="UAGENT", thread_ts=head.ts))
        relayed = await tab.next("message")
        assert relayed["text"] == messages.agent_reply("Ann", "Hi, I'm Ann. Your refund is on its way.")

        # The visitor answers the person; it goes to the thread, not to the model.
        await tab.say("Thanks! When will it arrive?", id="msg-00000002")
        await fake_slack.wait_for(
            lambda: any(m.text == "*Customer:* Thanks! When will it arrive?" for m in fake_slack.in_thread(SUPPORT, head.ts))
        )
        await slack.deliver(message(SUPPORT, "Within 3 days.", user="UAGENT", thread_ts=head.ts))
        assert (await tab.next("message"))["text"] == messages.agent_reply("Ann", "Within 3 days.")

        # 4. Resolve, with the ticket's button.
        pressed = await slack.send({"payload": json.dumps(block_action(head, action_id="parley_resolve"))}, form=True)
        assert pressed.status == 200
        assert (await tab.next("message"))["text"] == messages.HANDED_BACK
        await fake_slack.wait_for(
            lambda: any(m.text == messages.resolved_by("Ann") for m in fake_slack.in_thread(SUPPORT, head.ts))
        )

        # 5. The bot answers again, and the model's prompt holds the whole exchange.
        await tab.say("Can you sum that up?", id="msg-00000003")
        ack = await tab.next("ack")
        _, done = await tab.answer(ack["answer"])
        assert done["text"]
        context = await web.answered(tab.visitor, turns=5)
    prompt = next(p for p in reversed(proxy.prompts()) if p["messages"][-1]["content"] == "Can you sum that up?")
    said: list[tuple[str, Any]] = [(m["role"], m["content"]) for m in prompt["messages"][1:]]
    # (Consecutive messages of one role are joined into one, as chat templates want them.)
    assert said == [
        ("user", "I want to talk to a person"),
        ("assistant", messages.HANDED_OFF + "\n\n" + messages.agent_reply("Ann", "Hi, I'm Ann. Your refund is on its way.")),
        ("user", "Thanks! When will it arrive?"),
        ("assistant", messages.agent_reply("Ann", "Within 3 days.") + "\n\n" + messages.HANDED_BACK),
        ("user", "Can you sum that up?"),
    ]
    assert context.messages[-1].content == done["text"]
