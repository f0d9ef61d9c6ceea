"""The support desk's ticket header links to the customer's conversation with whatever link that
customer's adapter registered, whichever adapter was created first (`AdapterContext.links`)."""

from __future__ import annotations

from slack_sdk.web.async_client import AsyncWebClient

import adapters.discord
from adapters.slack.desk import SlackDesk
from bot.config import DiscordSettings
from bot.handoff.desk import Ticket
from bot.runtime import open_runtime
from bot.turns import ConversationKey
from tests.slack.conftest import BOT_TOKEN, DEAD_LLM
from tests.slack.fake import FakeSlack

SUPPORT = "CSUPPORT"


async def test_a_ticket_links_with_the_link_of_an_adapter_created_after_the_desk(make_settings, fake_slack: FakeSlack):
    fake_slack.add_channel(SUPPORT, "support", private=True)
    discord = DiscordSettings(_env_file=None, token="discord-test-token")
    async with open_runtime(make_settings(llm_url=DEAD_LLM, discord=discord)) as runtime:
        context = runtime.adapter_context()
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
        desk = SlackDesk(client, channel=SUPPORT, store=context.tickets, links=context.links, limit=3000)
        assert adapters.discord.create(context) is not None  # registers Discord's link, after the desk exists
        await desk.open(Ticket(ConversationKey("discord", "42", "7", "99"), "slack", "", "U1", "request"))
        await desk.open(Ticket(ConversationKey("web", "shop", "v1"), "slack", "", "v1", "request"))
    discord_head, web_head = (m.text for m in fake_slack.in_thread(SUPPORT, None))
    assert "<https://discord.com/channels/42/7/99|open the conversation>" in discord_head
    assert "(conversation `web:shop:v1:`)" in web_head  # the web chat has no link of its own
