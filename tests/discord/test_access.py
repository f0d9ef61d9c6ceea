"""Who may use Parley on Discord: DMs follow DISCORD_ALLOW_DMS, which is off by default once an
allow-list scopes Parley to some servers or channels (a DM is in none of them, and anyone who
shares any server with the bot can open one). The real discord.py client against the fake."""

from __future__ import annotations

import logging

import pytest

from bot import messages
from tests.discord.conftest import DEAD_LLM, discord_settings, poll, serving
from tests.discord.fake import FakeDiscord, Json


async def shown(fake: FakeDiscord, interaction: Json) -> str:
    """What a slash command's (deferred) response says, once it says something."""
    return await poll(lambda: "original" in interaction and fake.messages[int(interaction["original"])]["content"])


async def test_with_an_allow_list_dms_are_refused_with_a_clear_line_and_help_says_so(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.discord.intake")
    dm = fake.dm_channel(alice)
    settings = make_settings(
        llm_url=DEAD_LLM, discord=discord_settings(fake, allowed_guilds=[int(channel["guild_id"])])
    )
    async with serving(fake, settings) as stack:
        refused = await fake.say(dm, alice, "let me in through the side door")
        (answer,) = await poll(lambda: fake.bot_messages(dm["id"]))
        ask = await fake.slash(dm, alice, "ask", question="and by command?")
        by_command = await shown(fake, ask)
        helped = await shown(fake, await fake.slash(channel, alice, "help"))
        # The guild in the allow-list is still served (the model is down: the apology).
        question = await fake.say(channel, alice, "in the allowed server", mention_bot=True)
        await poll(lambda: fake.replies_to(question))
        context = await stack.context("dm", dm["id"], dm["id"])
    assert answer["content"] == messages.DISCORD_DMS_OFF and by_command == messages.DISCORD_DMS_OFF
    assert ask["response"]["data"]["flags"] & 64, "the refused command answers only its caller"
    assert not context.messages, "a refused DM never reaches the dialogue"
    assert len(fake.bot_messages(dm["id"])) == 1 + 1  # the refusal, and the refused command's own response
    assert "Direct messages are off" in helped and "message me directly" not in helped
    assert "`/config`" in helped, "the admins' command, registered wherever there are run-time profiles"
    refusals = [r for r in caplog.records if "direct message refused" in r.getMessage()]
    assert len(refusals) == 2 and refused["id"] in {getattr(r, "event", None) for r in refusals}


async def test_an_explicit_allow_dms_wins_over_the_allow_list(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json
) -> None:
    dm = fake.dm_channel(alice)
    settings = make_settings(
        llm_url=DEAD_LLM, discord=discord_settings(fake, allowed_guilds=[int(channel["guild_id"])], allow_dms=True)
    )
    async with serving(fake, settings):
        await fake.say(dm, alice, "hello in private")
        (answer,) = await poll(lambda: fake.bot_messages(dm["id"]))
        helped = await shown(fake, await fake.slash(dm, alice, "help"))
    assert "language model" in answer["content"], "answered by the dialogue (the model is down: its apology)"
    assert "message me directly" in helped and "Direct messages are off" not in helped
