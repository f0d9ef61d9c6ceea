"""The button "Talk to a person" under Slack answers where a support desk takes requests, through
slack-bolt against the fake Slack: a press hands the answer's conversation to the desk, as asking in words
does; a forged value is acknowledged and dropped; without a desk there is no button."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from adapters.slack import normalize
from bot import messages
from bot.config import HandoffSettings
from tests.handoff.conftest import SUPPORT
from tests.slack.conftest import SIGNING_SECRET, serving, slack_settings
from tests.slack.fake import FakeSlack, Posted, block_action, mention, signed_request
from tests.standin import ScriptedEngine

CUSTOMER = "C0001"


@pytest.fixture
async def standin():
    async with ScriptedEngine("Restart the router, then try again.").serving() as url:
        yield url


def stack(make_settings: Any, fake: FakeSlack, llm_url: str, **handoff: Any) -> Any:
    fake.add_channel(SUPPORT, "support", private=True)
    sections: dict[str, Any] = {"slack": slack_settings(fake), "handoff": HandoffSettings(_env_file=None, **handoff)}
    return serving(make_settings(llm_url=llm_url, **sections), fake)


async def answered(fake: FakeSlack, stack: Any, text: str) -> tuple[dict[str, Any], Posted]:
    event = mention(CUSTOMER, text)
    await stack.deliver(event)
    await stack.answered(CUSTOMER, event["ts"], timeout=60)
    answer = await fake.wait_for(lambda: next((m for m in fake.in_thread(CUSTOMER, event["ts"]) if m.blocks), None))
    return event, answer


def person_button(message: Posted) -> dict[str, Any]:
    [block] = [b for b in message.blocks or [] if b.get("block_id") == normalize.PERSON_BLOCK]
    [button] = block["elements"]
    return dict(button)


async def press(stack: Any, message: Posted, value: str, user: str = "UBOB") -> int:
    payload = block_action(
        message, action_id=normalize.PERSON_ACTION, user=user, value=value, block_id=normalize.PERSON_BLOCK
    )
    delivered = await signed_request(
        stack.session, stack.events_url, {"payload": json.dumps(payload)}, secret=SIGNING_SECRET, form=True
    )
    return delivered.status


async def test_a_press_hands_the_conversation_to_the_desk(make_settings, fake_slack, standin, caplog):
    caplog.set_level(logging.INFO)
    async with stack(make_settings, fake_slack, standin, slack_channel=SUPPORT) as s:
        event, answer = await answered(fake_slack, s, "my router keeps dropping the connection")
        button = person_button(answer)
        assert button["text"]["text"] == messages.PERSON_BUTTON and button["value"] == event["ts"]

        # A forged value (no thread Parley made) is acknowledged and dropped.
        assert await press(s, answer, "../C0002") == 200
        assert "a button press with a value Parley never put on a button: ignored" in caplog.text

        assert await press(s, answer, button["value"]) == 200
        head = await fake_slack.wait_for(lambda: next(iter(fake_slack.in_thread(SUPPORT, None)), None))
        assert f"{CUSTOMER}-{event['ts']}" in head.text  # the ticket links the customer's thread
        await fake_slack.wait_for(
            lambda: messages.HANDED_OFF in [m.text for m in fake_slack.in_thread(CUSTOMER, event["ts"])]
        )
        assert "routed to handoff by explicit step" in caplog.text  # the presser asked for a person


async def test_no_button_without_requests_to_a_desk(make_settings, fake_slack, standin):
    async with stack(make_settings, fake_slack, standin, slack_channel=SUPPORT, on_request=False) as s:
        _, answer = await answered(fake_slack, s, "my router keeps dropping the connection")
    assert normalize.PERSON_BLOCK not in [b.get("block_id") for b in answer.blocks or []]
