"""👍/👎 feedback buttons under every answer, through slack-bolt against the fake Slack.

Parley serves Slack (signed Events API requests, real Redis, the real runtime) with the scripted
engine stand-in. Each answer's last message carries Slack's `feedback_buttons`; a press comes
back as a signed `block_actions` request and is stored as the same vote a reaction is: one per
person and answer, changeable. Presses Parley cannot trace to an answer are logged and dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.mrkdwn import escape
from adapters.slack.sink import SlackSink, StreamingSupport, feedback_block
from bot import messages
from bot.turns import Turn
from tests.slack.conftest import BOT_TOKEN, SlackStack
from tests.slack.fake import TEAM, Posted, feedback_press, mention
from tests.standin import ScriptedEngine

CHANNEL = "C0001"
ANSWER = "Ask <!channel> & the team: a KV cache keeps the keys and values."


@pytest.fixture
async def standin():
    async with ScriptedEngine(ANSWER).serving() as url:
        yield url


async def press(stack: SlackStack, message: Posted, *, positive: bool, user: str = "UALICE", **change: Any) -> int:
    """Press 👍 or 👎 on `message` as `user` (a signed interactivity request); Parley's HTTP status.
    `change`: fields of the pressed action to alter, as a forged request would."""
    payload = feedback_press(message, positive=positive, user=user)
    payload["actions"][0] |= change
    return (await stack.send({"payload": json.dumps(payload)}, form=True)).status


async def votes(stack: SlackStack, up: int, down: int) -> None:
    """Wait until today's figures for the workspace count these votes."""
    async with asyncio.timeout(30):
        while True:
            days = await stack.runtime.stats.days(days=1, tenant=TEAM)
            if days and (days[0].up, days[0].down) == (up, down):
                return
            await asyncio.sleep(0.05)


async def answered(stack: SlackStack) -> Posted:
    """Mention Parley and wait for the answer's message to carry its buttons."""
    event = mention(CHANNEL, "what is a KV cache?")
    await stack.deliver(event)
    await stack.answered(CHANNEL, event["ts"], timeout=60)
    return await stack.fake.wait_for(
        lambda: next((m for m in stack.fake.in_thread(CHANNEL, event["ts"]) if m.blocks), None)
    )


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


async def test_a_press_stores_the_vote_and_the_other_button_changes_it(stack_for, fake_slack, standin, caplog):
    caplog.set_level(logging.INFO)
    async with stack_for(standin) as stack:
        answer = await answered(stack)
        # The text shown as a section (escaped: no channel ping), then the native feedback buttons.
        section, actions = answer.blocks or []
        assert (
            section["text"]["text"]
            == answer.text
            == ANSWER.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        )
        assert actions["type"] == "context_actions"
        [buttons] = actions["elements"]
        assert buttons["type"] == "feedback_buttons"
        assert (buttons["positive_button"]["value"], buttons["negative_button"]["value"]) == ("up", "down")
        assert buttons["positive_button"]["accessibility_label"] == messages.FEEDBACK_UP_LABEL

        assert await press(stack, answer, positive=True) == 200
        await votes(stack, 1, 0)
        assert await press(stack, answer, positive=False) == 200  # Alice changes her mind
        await votes(stack, 0, 1)
        assert await press(stack, answer, positive=False) == 200  # the same again: nothing changes
        assert await press(stack, answer, positive=True, user="UBOB") == 200  # another person's own vote
        await votes(stack, 1, 1)
        await asyncio.sleep(0.3)  # the repeated 👎 is stored as nothing, not as a second vote
        await votes(stack, 1, 1)
    log = logged(caplog)
    assert log.count("feedback up on") == 2 and log.count("feedback down on") == 1
    assert "(changed)" in log and "unchanged (down again)" in log


async def test_a_press_parley_cannot_trace_is_logged_and_ignored(stack_for, fake_slack, standin, caplog):
    caplog.set_level(logging.INFO)
    async with stack_for(standin) as stack:
        answer = await answered(stack)
        # Buttons on a message that is no answer Parley remembers (expired, or not Parley's).
        stranger = Posted(CHANNEL, "1600000000.000100", None, "old", blocks=[feedback_block()])
        assert await press(stack, stranger, positive=False) == 200
        # A value Parley never put on a button, and a payload without a user.
        assert await press(stack, answer, positive=True, value="five-stars") == 200
        payload = feedback_press(answer, positive=True)
        del payload["user"]
        assert (await stack.send({"payload": json.dumps(payload)}, form=True)).status == 200
        await asyncio.sleep(0.3)
        days = await stack.runtime.stats.days(days=1, tenant=TEAM)
        assert not days or (days[0].up, days[0].down) == (0, 0)
    log = logged(caplog)
    assert f"down button on {CHANNEL}:1600000000.000100, which is no answer Parley remembers: ignored" in log
    assert log.count("a feedback press without a vote Parley made: ignored") == 2
    assert "feedback up on" not in log


async def test_natively_streamed_answers_get_the_buttons_when_the_stream_stops(stack_for, fake_slack, standin):
    fake_slack.streaming = True
    async with stack_for(standin, native_streaming=True) as stack:
        answer = await answered(stack)
        assert answer.streamed and answer.stopped
        [stop] = fake_slack.calls_to("chat.stopStream")
        assert [b["type"] for b in stop.args["blocks"]] == ["context_actions"]
        assert await press(stack, answer, positive=False) == 200
        await votes(stack, 0, 1)


async def test_no_buttons_when_turned_off(stack_for, fake_slack, standin):
    async with stack_for(standin, feedback_buttons=False) as stack:
        event = mention(CHANNEL, "what is a KV cache?")
        await stack.deliver(event)
        await stack.answered(CHANNEL, event["ts"], timeout=60)
        [answer] = fake_slack.in_thread(CHANNEL, event["ts"])
        assert answer.blocks is None and not any("blocks" in c.args for c in fake_slack.calls_to("chat.update"))


def sink(client: AsyncWebClient, *, streaming: bool) -> SlackSink:
    turn = Turn(platform="slack", tenant=TEAM, channel=CHANNEL, user="UALICE", text="q", event_id="Ev1", thread="1.2")
    return SlackSink(client, turn, limit=40_000, interval=0.05, streaming=StreamingSupport(streaming), feedback=True)


async def pieces(text: str, size: int = 500) -> AsyncIterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


async def test_a_long_answer_is_cut_into_sections_above_the_buttons(fake_slack):
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    text = "Keys & values <cached> per token.\n" * 600  # 20,400 characters, 26,400 escaped
    assert await sink(client, streaming=False).stream(pieces(text)) == text
    [answer] = fake_slack.in_thread(CHANNEL, "1.2")
    *parts, buttons = answer.blocks or []
    assert buttons == feedback_block() and {p["type"] for p in parts} == {"section"}
    assert all(len(p["text"]["text"]) <= 3000 for p in parts) and len(parts) == 9
    assert "\n".join(p["text"]["text"] for p in parts).rstrip("\n") == answer.text.rstrip("\n")
    assert "<cached>" not in answer.text and "&lt;cached&gt;" in answer.text


async def test_an_answer_stays_whole_where_slack_refuses_the_buttons(fake_slack, caplog):
    caplog.set_level(logging.INFO)
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    fake_slack.blocks_refused = {"chat.update", "chat.stopStream"}
    assert await sink(client, streaming=False).stream(pieces(ANSWER, 7)) == ANSWER
    fake_slack.streaming = True
    turn = Turn(platform="slack", tenant=TEAM, channel=CHANNEL, user="UALICE", text="q", event_id="Ev2", thread="3.4")
    native = SlackSink(client, turn, limit=3000, interval=0.05, streaming=StreamingSupport(True), feedback=True)
    assert await native.stream(pieces(ANSWER, 7)) == ANSWER
    [edited] = fake_slack.in_thread(CHANNEL, "1.2")
    [streamed] = fake_slack.in_thread(CHANNEL, "3.4")
    assert edited.blocks is None and edited.text == streamed.text == escape(ANSWER)
    assert streamed.streamed and streamed.stopped and streamed.blocks is None  # stopped, without the buttons
    log = logged(caplog)
    assert "could not add the sources and buttons under an answer" in log
    assert "chat.stopStream refused the answer's blocks (invalid_blocks); stopped without them" in log
