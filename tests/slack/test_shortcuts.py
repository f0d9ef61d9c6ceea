"""Slack's message shortcuts, through slack-bolt against the fake Slack, with the scripted engine.

"Ask Parley about this message" asks the message's text in its thread, which Parley then follows;
"Summarise this thread" reads the thread page by page and asks for a summary of its lines. What
cannot be done is told to the person alone, in an ephemeral message.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from adapters.slack.shortcuts import ASK, SUMMARISE
from adapters.slack.summaries import MAX_CHARS as MAX_THREAD_CHARS
from adapters.slack.summaries import newest
from bot import messages
from tests.slack.conftest import SlackStack
from tests.slack.fake import BOT_USER, message, message_action
from tests.standin import ScriptedEngine

CHANNEL = "C0001"
ANSWER = "It means the deploy waits for the review."


async def use(stack: SlackStack, payload: dict[str, Any]) -> int:
    """Pick a message shortcut (a signed interactivity request); Parley's HTTP status."""
    return (await stack.send({"payload": json.dumps(payload)}, form=True)).status


def asked(engine: ScriptedEngine) -> list[str]:
    """The last user message of every chat request the engine got."""
    return [[m for m in r["messages"] if m["role"] == "user"][-1]["content"] for r in engine.requests]


async def test_ask_answers_in_the_messages_thread_and_follows_it(stack_for):
    engine = ScriptedEngine(ANSWER)
    async with engine.serving() as url, stack_for(url) as stack:
        original = message(CHANNEL, f"<@{BOT_USER}> what does <@UBOB> mean by &lt;gated&gt; deploys?", user="UCAROL")
        payload = message_action(ASK, CHANNEL, original, user="UALICE")
        assert await use(stack, payload) == 200
        assert await use(stack, payload) == 200  # the same payload twice is answered once
        context = await stack.answered(CHANNEL, original["ts"], timeout=60)
        assert asked(engine)[-1] == "what does <@UBOB> mean by <gated> deploys?"

        # A reply in that thread without a mention continues the conversation.
        follow = message(CHANNEL, "and how long does that take?", thread_ts=original["ts"])
        await stack.deliver(follow)
        context = await stack.answered(CHANNEL, original["ts"], turns=2, timeout=60)
    assert [m.content for m in context.messages] == [
        "what does <@UBOB> mean by <gated> deploys?",
        ANSWER,
        "and how long does that take?",
        ANSWER,
    ]
    assert [p.text for p in stack.fake.in_thread(CHANNEL, original["ts"])] == [ANSWER, ANSWER]


async def test_ask_on_a_reply_answers_in_its_thread(stack_for):
    engine = ScriptedEngine(ANSWER)
    async with engine.serving() as url, stack_for(url) as stack:
        parent = message(CHANNEL, "release notes")
        reply = message(CHANNEL, "why is the deploy gated?", thread_ts=parent["ts"])
        assert await use(stack, message_action(ASK, CHANNEL, reply)) == 200
        await stack.answered(CHANNEL, parent["ts"], timeout=60)
    assert [p.text for p in stack.fake.in_thread(CHANNEL, parent["ts"])] == [ANSWER]


async def test_ask_on_a_message_without_text_is_told_so(stack_for, caplog):
    caplog.set_level(logging.INFO, logger="adapters.slack.shortcuts")
    async with stack_for() as stack:
        files_only = message(CHANNEL, "", subtype="file_share", files=[{"id": "F1", "name": "plan.pdf"}])
        assert await use(stack, message_action(ASK, CHANNEL, files_only, user="UALICE")) == 200
        [told] = await stack.fake.wait_for(lambda: stack.fake.ephemeral, timeout=30)
    assert (told.text, told.user, told.thread_ts) == (messages.SHORTCUT_NO_TEXT, "UALICE", files_only["ts"])
    assert not stack.fake.messages
    assert "without text" in caplog.text


async def test_summarise_reads_every_page_of_the_thread(stack_for):
    engine = ScriptedEngine("They agreed to ship on Friday.")
    async with engine.serving() as url, stack_for(url) as stack:
        thread = [message(CHANNEL, "shall we ship on Friday?", user="UBOB")]
        thread += [message(CHANNEL, f"point {i} <b>", user="UCAROL") for i in range(4)]
        thread.append(message(CHANNEL, f"<@{BOT_USER}> agreed, Friday", user="UDAN"))
        parent = stack.fake.add_thread(CHANNEL, thread)
        stack.fake.replies_page = 4
        assert (
            await use(
                stack, message_action(SUMMARISE, CHANNEL, stack.fake.threads[(CHANNEL, parent)][2], user="UALICE")
            )
            == 200
        )
        await stack.answered(CHANNEL, parent, timeout=60)
    pages = stack.fake.calls_to("conversations.replies", ok=True)
    assert len(pages) == 2 and not pages[0].args.get("cursor") and pages[1].args["cursor"]
    assert {c.args["ts"] for c in pages} == {parent}
    prompt = asked(engine)[-1]
    assert prompt == messages.summarise_thread(
        ["UBOB: shall we ship on Friday?", *[f"UCAROL: point {i} <b>" for i in range(4)], "UDAN: agreed, Friday"], 0
    )
    assert [p.text for p in stack.fake.in_thread(CHANNEL, parent)] == ["They agreed to ship on Friday."]


async def test_summarise_of_a_thread_parley_cannot_read_is_told_so(stack_for, caplog):
    async with stack_for() as stack:
        parent = stack.fake.add_thread("C0SECRET", [message("C0SECRET", "private plans")])
        stack.fake.not_in.add("C0SECRET")
        assert await use(stack, message_action(SUMMARISE, "C0SECRET", {"ts": parent, "text": "x"})) == 200
        [told] = await stack.fake.wait_for(lambda: stack.fake.ephemeral, timeout=30)
    assert (told.text, told.user, told.channel) == (messages.SUMMARY_UNREADABLE, "UALICE", "C0SECRET")
    assert not stack.fake.messages
    assert "not_in_channel" in caplog.text


def test_a_long_thread_keeps_its_newest_lines_and_says_so():
    lines = [f"U{i}: " + "x" * 95 for i in range(100)]  # 100 characters a line, 101 with its newline
    kept, left_out = newest(lines, MAX_THREAD_CHARS)
    assert kept == lines[-len(kept) :] and len(kept) == MAX_THREAD_CHARS // 101 and left_out == 100 - len(kept)
    prompt = messages.summarise_thread(kept, left_out)
    assert f"({left_out} older messages were left out.)" in prompt and prompt.endswith(f"{lines[-1]}\nthread>>>")
    assert newest(lines[:3], MAX_THREAD_CHARS) == (lines[:3], 0)
