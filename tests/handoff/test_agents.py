"""The agent check's memory (`adapters.slack.agents`) against the fake Slack's Web API, on a clock the
test moves: users.info and the agent groups' members are read again after the refresh, and a
failed read keeps the last list (with none yet, nobody is admitted)."""

from __future__ import annotations

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.agents import Agents
from adapters.slack.normalize import Identity
from bot import messages
from bot.errors import PlatformError
from tests.slack.conftest import BOT_TOKEN, fake_slack  # noqa: F401 - the fake Slack fixture
from tests.slack.fake import BOT_USER, TEAM

ME = Identity(user_id=BOT_USER, bot_id="BPARLEY", team_id=TEAM)


async def test_agent_groups_are_read_again_after_the_refresh_and_kept_when_slack_fails(fake_slack):
    now = [0.0]
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    agents = Agents(
        lambda: client,
        groups=["SAGENTS"],
        refresh=60,
        clock=lambda: now[0],
    )
    fake_slack.add_user("UBOB", "bob")
    with pytest.raises(PlatformError):  # no such group: nothing to go by, so nobody is admitted
        await agents.members()
    assert (await agents.admit("UBOB", team=TEAM, me=ME)).notice == messages.AGENT_UNCHECKED
    fake_slack.add_group("SAGENTS", "UANN")
    assert (await agents.admit("UBOB", team=TEAM, me=ME)).notice == messages.AGENT_NOT_IN_GROUP
    fake_slack.add_group("SAGENTS", "UANN", "UBOB")
    now[0] = 59.0
    assert (await agents.admit("UBOB", team=TEAM, me=ME)).refused  # the list read a minute ago still counts
    now[0] = 61.0
    assert (await agents.admit("UBOB", team=TEAM, me=ME)).refused == ""  # read again
    fake_slack.server_errors["usergroups.users.list"] = [500, 500]
    now[0] = 200.0
    assert (await agents.admit("UBOB", team=TEAM, me=ME)).refused == ""  # Slack failed: the last list is kept
    assert len(fake_slack.calls_to("users.info")) == 3  # kept for a minute too: read at 0, 61 and 200
