"""Slack's `help` and `/parley help`, through slack-bolt against the fake Slack: what this
deployment offers, made in one place (`messages.slack_help`) and answered by the adapter.

With Redis, run-time profiles can be stored, so workspace admins are told of `/parley config`;
without it, they are not. Every help names the message shortcuts and the pane's `summarise`.
"""

from __future__ import annotations

import asyncio

from bot import messages
from bot.config import RedisSettings
from tests.slack.fake import command, message


def test_help_names_what_slack_offers_and_config_only_where_it_can_be_stored():
    offered = messages.slack_help(config=True)
    assert "`/parley config`" in offered and "admins" in offered
    assert "*Ask Parley about this*" in offered and "*Summarise this thread*" in offered
    assert "`summarise`" in offered and "assistant pane" in offered
    assert "`help`" in offered and "`reset`" in offered
    assert messages.slack_help(config=False) == offered.rsplit("\n", 1)[0]  # the same, without the config line
    assert "/parley config" not in messages.slack_help(config=False)


async def test_slash_and_typed_help_list_config_with_redis(stack_for, fake_slack):
    async with stack_for() as stack:
        delivery = await stack.send(command("help", response_url=fake_slack.response_url()), form=True)
        assert delivery.status == 200 and delivery.text == ""  # acknowledged at once, answered after
        [answer] = await fake_slack.wait_for(lambda: fake_slack.responses, timeout=30)
        assert answer["text"] == messages.slack_help(config=True) and answer["response_type"] == "ephemeral"
        assert answer["at"] > delivery.at

        # `help` typed in a DM, and a Slack retry of it: answered once.
        body, _ = await stack.deliver(message("D0001", "help", channel_type="im"))
        await stack.send(body, retry_num=1)
        await fake_slack.wait_for(lambda: fake_slack.in_thread("D0001", None), timeout=30)
        await asyncio.sleep(0.5)  # a second answer would be posted by now
    assert [m.text for m in fake_slack.in_thread("D0001", None)] == [messages.slack_help(config=True)]
    assert (await stack.context("D0001")).messages == ()  # no turn of the conversation


async def test_help_without_redis_leaves_config_out(stack_for, fake_slack):
    async with stack_for(redis=RedisSettings(_env_file=None, url=None)) as stack:
        assert stack.runtime.redis is None
        await stack.send(command("help", response_url=fake_slack.response_url()), form=True)
        [answer] = await fake_slack.wait_for(lambda: fake_slack.responses, timeout=30)
    assert answer["text"] == messages.slack_help(config=False)
