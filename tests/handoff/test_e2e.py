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

import json
from typing import Any

import pytest

from bot import messages
from bot.config import HandoffSettings
from tests.handoff.conftest import SUPPORT, quoted, serving_web_and_slack
from tests.routing.test_pipeline import proxy  # noqa: F401 - the recording proxy in front of the engine
from tests.slack.conftest import slack_settings
from tests.slack.fake import block_action, message
from tests.web.conftest import web_settings

pytestmark = pytest.mark.engine


async def test_a_web_visitor_is_handed_to_a_person_in_slack_and_back(make_settings, proxy, fake_slack):
    fake_slack.add_user("UAGENT", "ann.k", display_name="Ann")
    fake_slack.add_channel(SUPPORT, "support", private=True)
    settings = make_settings(
        llm_url=proxy.url,
        web=web_settings(),
        slack=slack_settings(fake_slack),
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
        assert (
            "*web*" in head.text
            and "`shop`" in head.text
            and tab.conversation in head.text
            and tab.visitor not in head.text
        )
        [transcript] = await fake_slack.wait_for(lambda: fake_slack.in_thread(SUPPORT, head.ts))
        assert quoted("Customer", "I want to talk to a person") in transcript.text

        # 3. A person replies in that thread; the reply reaches the visitor's browser, with their name.
        await slack.deliver(
            message(SUPPORT, "Hi, I'm Ann. Your refund is on its way.", user="UAGENT", thread_ts=head.ts)
        )
        relayed = await tab.next("message")
        assert relayed["text"] == "Hi, I'm Ann. Your refund is on its way."
        assert (relayed["kind"], relayed["agent"]) == ("agent", messages.agent_label("Ann"))  # shown as the person's

        # The visitor answers the person; it goes to the thread, not to the model.
        await tab.say("Thanks! When will it arrive?", id="msg-00000002")
        await fake_slack.wait_for(
            lambda: any(
                m.text == quoted("Customer", "Thanks! When will it arrive?")
                for m in fake_slack.in_thread(SUPPORT, head.ts)
            )
        )
        await slack.deliver(message(SUPPORT, "Within 3 days.", user="UAGENT", thread_ts=head.ts))
        assert (await tab.next("message"))["text"] == "Within 3 days."

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
        (
            "assistant",
            messages.HANDED_OFF + "\n\n" + messages.agent_reply("Ann", "Hi, I'm Ann. Your refund is on its way."),
        ),
        ("user", "Thanks! When will it arrive?"),
        ("assistant", messages.agent_reply("Ann", "Within 3 days.") + "\n\n" + messages.HANDED_BACK),
        ("user", "Can you sum that up?"),
    ]
    assert context.messages[-1].content == done["text"]
