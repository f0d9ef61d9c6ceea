"""The web chat's "Talk to a person" button: its frame through the real web adapter and the
dialogue manager to a ticket in the fake Slack's support channel, with slack-bolt serving the
desk. The press is explicit, like a slash command: no model is asked (the engine here is dead)."""

from __future__ import annotations

from bot import messages
from bot.config import HandoffSettings
from tests.handoff.conftest import DEAD_LLM, SUPPORT, quoted, serving_web_and_slack
from tests.slack.conftest import slack_settings
from tests.web.conftest import web_settings


def _settings(make_settings, fake_slack, **handoff):
    fake_slack.add_channel(SUPPORT, "support", private=True)
    return make_settings(
        llm_url=DEAD_LLM,
        web=web_settings(),
        slack=slack_settings(fake_slack),
        handoff=HandoffSettings(_env_file=None, slack_channel=SUPPORT, **handoff),
    )


async def test_the_button_opens_a_ticket_with_the_visitors_request(make_settings, fake_slack):
    async with serving_web_and_slack(_settings(make_settings, fake_slack), fake_slack) as (web, _):
        tab = await web.connect()
        assert tab.welcome["person"] is True  # the widget shows the button

        await tab.send({"type": "handoff", "id": "person-0001"})
        ack = await tab.next("ack")
        assert (ack["id"], ack["text"]) == ("person-0001", messages.ASK_FOR_PERSON)
        notice = await tab.next("message")
        assert (notice["text"], notice["reply_to"]) == (messages.HANDED_OFF, ack["answer"])

        head = await fake_slack.wait_for(lambda: next(iter(fake_slack.in_thread(SUPPORT, None)), None))
        assert tab.conversation in head.text and tab.visitor not in head.text
        [transcript] = await fake_slack.wait_for(lambda: fake_slack.in_thread(SUPPORT, head.ts))
        assert quoted("Customer", messages.ASK_FOR_PERSON) in transcript.text
        saved = await web.context(tab.visitor)
        assert [m.content for m in saved.messages] == [messages.ASK_FOR_PERSON, messages.HANDED_OFF]


async def test_no_button_where_requests_for_a_person_are_off(make_settings, fake_slack):
    settings = _settings(make_settings, fake_slack, on_request=False)
    async with serving_web_and_slack(settings, fake_slack) as (web, _):
        tab = await web.connect()
        assert tab.welcome["person"] is False
