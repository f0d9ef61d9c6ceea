"""The Slack side of handing off, through slack-bolt against the fake Slack: tickets in the support
channel, people's replies and Resolve (button and typed) coming back as turns, 👍/👎 reactions.
The engine is unreachable: nothing here needs an answer from the model."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from bot import messages
from bot.config import HandoffSettings
from tests.handoff.conftest import SUPPORT, quoted
from tests.slack.conftest import DEAD_LLM, SIGNING_SECRET, serving, slack_settings
from tests.slack.fake import (
    BOT_USER,
    FakeSlack,
    block_action,
    command,
    mention,
    message,
    reaction_added,
    signed_request,
)

CUSTOMER = "C0001"


def stack(make_settings, fake: FakeSlack, **handoff: Any):
    fake.add_channel(SUPPORT, "support", private=True)
    sections: dict[str, Any] = {"slack": slack_settings(fake), "handoff": HandoffSettings(_env_file=None, **handoff)}
    return serving(make_settings(llm_url=DEAD_LLM, **sections), fake)


async def until(read: Any, done: Any, timeout: float = 60) -> Any:
    """Read until `done(value)`: what a worker saves lands a moment after what it sends."""
    async with asyncio.timeout(timeout):
        while not done(value := await read()):
            await asyncio.sleep(0.05)
    return value


def texts(fake: FakeSlack, channel: str, ts: str) -> list[str]:
    return [m.text for m in fake.in_thread(channel, ts)]


async def test_a_slack_customer_handed_to_people_in_the_support_channel_and_back(make_settings, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    fake_slack.add_user("UAGENT", "ann.k", display_name="Ann", real_name="Ann Kowalski")
    async with stack(make_settings, fake_slack, slack_channel=SUPPORT) as s:
        asked = mention(CUSTOMER, "I want to talk to a person")
        await s.deliver(asked)
        head = await fake_slack.wait_for(lambda: next(iter(fake_slack.in_thread(SUPPORT, None)), None))
        await fake_slack.wait_for(lambda: messages.HANDED_OFF in texts(fake_slack, CUSTOMER, asked["ts"]))
        assert (
            "*slack*" in head.text
            and f"app.slack.com/client/T0001/{CUSTOMER}/thread/{CUSTOMER}-{asked['ts']}" in head.text
        )
        assert head.blocks[1]["elements"][0]["action_id"] == "parley_resolve"
        await fake_slack.wait_for(lambda: texts(fake_slack, SUPPORT, head.ts))  # the transcript

        # A person answers in the ticket thread: the customer gets it, signed with their display name.
        await s.deliver(message(SUPPORT, "Hello, Ann here.", user="UAGENT", thread_ts=head.ts))
        relayed = messages.agent_reply("Ann", "Hello, Ann here.")
        await fake_slack.wait_for(lambda: relayed in texts(fake_slack, CUSTOMER, asked["ts"]))
        # Mentioning Parley in the thread is still one reply (Slack sends the mention twice).
        second = message(SUPPORT, f"<@{BOT_USER}> Which invoice?", user="UAGENT", thread_ts=head.ts)
        await s.deliver(dict(second, type="app_mention"))
        await s.deliver(second)
        await fake_slack.wait_for(
            lambda: messages.agent_reply("Ann", "Which invoice?") in texts(fake_slack, CUSTOMER, asked["ts"])
        )
        assert len(fake_slack.calls_to("users.info")) == 1  # the name is cached

        # The customer's follow-up in their thread goes to the people, not the model.
        await s.deliver(message(CUSTOMER, "number 42", thread_ts=asked["ts"]))
        await fake_slack.wait_for(lambda: quoted("Customer", "number 42") in texts(fake_slack, SUPPORT, head.ts))

        # Resolve with the button: the customer is back with the bot.
        pressed = await s.send({"payload": json.dumps(block_action(head, action_id="parley_resolve"))}, form=True)
        assert pressed.status == 200
        await fake_slack.wait_for(lambda: messages.HANDED_BACK in texts(fake_slack, CUSTOMER, asked["ts"]))
        await fake_slack.wait_for(lambda: messages.resolved_by("Ann") in texts(fake_slack, SUPPORT, head.ts))
        customer_side = texts(fake_slack, CUSTOMER, asked["ts"])
        assert customer_side == [
            messages.HANDED_OFF,
            relayed,
            messages.agent_reply("Ann", "Which invoice?"),
            messages.HANDED_BACK,
        ]
        context = await until(
            lambda: s.context(CUSTOMER, asked["ts"]), lambda c: c.messages[-1].content == messages.HANDED_BACK
        )
        assert [m.content for m in context.messages][-3:] == [
            messages.agent_reply("Ann", "Which invoice?"),
            "number 42",
            messages.HANDED_BACK,
        ]

        # A second handoff, resolved by typing in the thread this time.
        again = mention(CUSTOMER, "get me a human please", thread_ts=asked["ts"])
        await s.deliver(again)
        heads = await fake_slack.wait_for(
            lambda: len(fake_slack.in_thread(SUPPORT, None)) == 2 and fake_slack.in_thread(SUPPORT, None)
        )
        await fake_slack.wait_for(lambda: texts(fake_slack, SUPPORT, heads[1].ts))  # the transcript: it is a ticket now
        await s.deliver(message(SUPPORT, "!resolve", user="UAGENT", thread_ts=heads[1].ts))
        await fake_slack.wait_for(lambda: texts(fake_slack, CUSTOMER, asked["ts"]).count(messages.HANDED_BACK) == 2)
        # The old ticket's thread is stale now: the people are told, the customer hears nothing.
        await s.deliver(message(SUPPORT, "hello again", user="UAGENT", thread_ts=head.ts))
        await fake_slack.wait_for(lambda: messages.AGENT_NOT_DELIVERED in texts(fake_slack, SUPPORT, head.ts))
        assert not any("hello again" in t for t in texts(fake_slack, CUSTOMER, asked["ts"]))

        # A thread in the support channel that is no ticket is left alone.
        other = message(SUPPORT, "a colleague's question", user="UBOB")
        await s.deliver(other)
        await s.deliver(message(SUPPORT, "a colleague's answer", user="UAGENT", thread_ts=other["ts"]))
        # /parley resolve cannot name a thread: it says how to resolve instead.
        slash = await signed_request(
            s.session,
            s.events_url,
            command("resolve", channel=SUPPORT, response_url=fake_slack.response_url()),
            secret=SIGNING_SECRET,
            form=True,
        )
        assert json.loads(slash.text) == {"text": messages.RESOLVE_IN_THREAD, "response_type": "ephemeral"}
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert f"thread {SUPPORT}:{other['ts']} of the support channel, which is no ticket: not relayed" in log
    assert not fake_slack.in_thread(SUPPORT, other["ts"])


async def test_thumbs_on_an_answer_are_stored_and_counted(make_settings, fake_slack, caplog):
    caplog.set_level(logging.INFO)
    async with stack(make_settings, fake_slack) as s:  # no support channel: a request gets an answer
        asked = mention(CUSTOMER, "Can I speak to a real person?")
        await s.deliver(asked)
        [answer] = await fake_slack.wait_for(lambda: fake_slack.in_thread(CUSTOMER, asked["ts"]))
        assert answer.text == messages.NO_AGENT
        body, _ = await s.deliver(reaction_added(CUSTOMER, answer.ts, reaction="+1::skin-tone-3"))
        await s.send(body, retry_num=1)  # Slack's retry of the same event
        await s.deliver(reaction_added(CUSTOMER, answer.ts, reaction="thumbsdown", user="UBOB"))
        await s.deliver(reaction_added(CUSTOMER, answer.ts, reaction="tada"))  # not a vote
        await s.deliver(reaction_added(CUSTOMER, answer.ts, reaction="+1", user=BOT_USER))  # Parley's own
        await s.deliver(
            reaction_added(CUSTOMER, asked["ts"], reaction="+1", item_user="UALICE")
        )  # not Parley's message
        await s.deliver(reaction_added(CUSTOMER, "1600000000.000100", reaction="-1"))  # no answer Parley knows

        await until(
            lambda: s.runtime.stats.days(days=1, tenant="T0001"),
            lambda days: bool(days) and (days[0].up, days[0].down) == (1, 1),
        )
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "down reaction on C0001:1600000000.000100, which is no answer Parley remembers: ignored" in log
    assert log.count("feedback up on") == 1 and log.count("feedback down on") == 1
