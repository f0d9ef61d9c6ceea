"""Starting and stopping `parley serve` with Discord: a refused slash-command registration
does not take the process down, and no turn is lost in silence at shutdown.

The real discord.py client against the fake Discord, the real server loop and Redis; the
model is unreachable, so an answered message gets the apology, which is all these need.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from bot import messages
from bot.config import DialogueSettings, OpsSettings
from bot.ops.endpoint import ops_server
from tests.discord.conftest import DEAD_LLM, discord_settings, on_own_redis, poll, serving
from tests.discord.fake import FakeDiscord, Json

COMMANDS = "discord:commands"
CALLBACK = r"/interactions/\d+/itoken-\w+/callback"


async def reply_to(fake: FakeDiscord, message: Json) -> Json:
    return (await poll(lambda: fake.replies_to(message)))[0]


async def readyz(port: int) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
        return await response.json()


# -- start-up: the slash-command registration is optional ---------------------------------------


@pytest.mark.parametrize("status", [403, 500])
async def test_a_refused_command_registration_is_reported_and_retried_while_mentions_are_answered(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """403 Missing Access is what DISCORD_TEST_GUILD pointing at a guild where the bot lacks the
    applications.commands scope gets; a 500 is retried by discord.py itself first (~25 s)."""
    caplog.set_level(logging.INFO)
    guild = channel["guild_id"]
    route = rf"/applications/\d+/guilds/{guild}/commands"
    refusal = (
        fake.refuse("PUT", route)
        if status == 403
        else fake.refuse("PUT", route, status=500, code=0, message="500: Internal Server Error")
    )
    settings = make_settings(
        llm_url=DEAD_LLM,
        ops=OpsSettings(_env_file=None, host="127.0.0.1", port=0),
        discord=discord_settings(fake, test_guild=int(guild), sync_retry=0.05),
    )
    async with serving(fake, settings) as stack:
        question = await fake.say(channel, alice, "are you there without your commands?", mention_bot=True)
        assert "language model" in (await reply_to(fake, question))["content"], "mentions are answered"
        problem = await poll(lambda: stack.runtime.degraded.problems().get(COMMANDS))
        async with ops_server(stack.runtime.watched(), [stack.adapter]) as port:
            assert (await readyz(port))["degraded"][COMMANDS] == problem
        if status == 403:
            await poll(lambda: len(fake.calls_to("PUT", route)) >= 3)  # tried again, and again
        fake.lift(refusal)
        await poll(lambda: guild in fake.commands)
        await poll(lambda: COMMANDS not in stack.runtime.degraded.problems())
        async with ops_server(stack.runtime.watched(), [stack.adapter]) as port:
            assert "degraded" not in await readyz(port)
        helped = await fake.slash(channel, alice, "help")
        await poll(lambda: "original" in helped and fake.messages[int(helped["original"])]["content"])
    slash = {"ask", "translate", "reset", "help", "config"}
    assert {c["name"] for c in fake.commands[guild]} == slash | {"Ask Parley", "Translate"}
    assert str(status) in problem
    if status == 403:
        assert "invite the bot" in problem and "applications.commands" in problem and guild in problem
    failures = [r for r in caplog.records if f"{COMMANDS} failed" in r.getMessage()]
    assert len(failures) == 1, "logged once, not at every retry"
    assert any(f"{COMMANDS} succeeded" in r.getMessage() for r in caplog.records)


# -- shutdown: intake stops before the inbox closes ----------------------------------------------


async def test_a_command_being_taken_when_the_server_stops_still_gets_into_the_inbox(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, caplog: pytest.LogCaptureFixture
) -> None:
    """The slash command's acknowledgement is still on its way when shutdown starts: the turn
    must find the inbox open (here the in-process one, whose turns are answered in the drain)."""
    caplog.set_level(logging.INFO, logger="bot.server")
    settings = make_settings(
        llm_url=DEAD_LLM, discord=discord_settings(fake), dialogue=DialogueSettings(_env_file=None, inbox="memory")
    )
    release = fake.hold("POST", CALLBACK)

    async def let_go_once_shutting_down() -> None:
        await poll(lambda: any("shutting down" in r.getMessage() for r in caplog.records))
        await asyncio.sleep(0.5)  # the old order closed the inbox meanwhile
        release.set()

    async with serving(fake, settings):
        ask = await fake.slash(channel, alice, "ask", question="asked just as Parley stops")
        await poll(lambda: fake.calls_to("POST", CALLBACK))
        releaser = asyncio.create_task(let_go_once_shutting_down())
    await releaser
    answer = fake.messages.get(int(ask["original"]))
    assert answer is not None and "language model" in answer["content"], "answered, not dropped"


async def test_turns_held_while_redis_is_down_are_told_busy_at_shutdown(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, redis_to_stop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(fake, on_own_redis(make_settings, redis_to_stop, fake)):
        await asyncio.to_thread(redis_to_stop.stop)
        held = await fake.say(channel, alice, "asked while Redis is down", mention_bot=True)
        await poll(lambda: any("holding turns in memory" in r.getMessage() for r in caplog.records))
    # Stopped with Redis still down: the user is told, not left waiting for an answer that never comes.
    (busy,) = fake.replies_to(held)
    assert busy["content"] == messages.BUSY
