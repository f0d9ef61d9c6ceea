"""`/translate text:… to:…` on Discord, down to the prompt the engine receives.

The real discord.py client against the fake Discord, the real dialogue manager, router and
translate handler; the engine is the scripted stand-in on loopback, which records every
request body (the real engine's random weights could not show which language was asked).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from bot import messages
from bot.handlers.translate import system_prompt
from bot.routing.languages import NAMES
from tests.discord.conftest import discord_settings, poll, serving
from tests.discord.fake import FakeDiscord, Json
from tests.standin import ScriptedEngine


@pytest_asyncio.fixture
async def standin() -> AsyncIterator[tuple[ScriptedEngine, str]]:
    engine = ScriptedEngine("Guten Morgen, mein Freund.")
    async with engine.serving() as url:
        yield engine, url


def translations(engine: ScriptedEngine) -> list[list[dict]]:
    """The chats the translate handler sent (routing or moderation may ask the engine too)."""
    return [r["messages"] for r in engine.requests if "You are a translator" in r["messages"][0]["content"]]


async def test_translate_to_names_the_language_the_engine_is_asked_for(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, standin: tuple[ScriptedEngine, str]
) -> None:
    engine, url = standin
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))):
        by_name = await fake.slash(
            channel, alice, "translate", text="Good morning, my friend. How are you today?", to="German"
        )
        await poll(lambda: len(translations(engine)) == 1)
        await fake.slash(channel, alice, "translate", text="The train leaves at noon.", to="fr")
        await poll(lambda: len(translations(engine)) == 2)
        unknown = await fake.slash(channel, alice, "translate", text="Good night.", to="Klingon")
        told = await poll(lambda: "original" in unknown and fake.messages[int(unknown["original"])]["content"])
        shown = fake.messages[int(by_name["original"])]["content"]
    german, french = translations(engine)
    assert german[0]["content"] == system_prompt("English", "German"), "not the tenant's default (English)"
    assert german[1]["content"] == "Good morning, my friend. How are you today?"
    assert french[0]["content"] == system_prompt("English", "French")
    assert shown == "Guten Morgen, mein Freund."
    assert told == messages.unknown_language("Klingon", sorted(NAMES.values())), "said so, not translated by default"
    assert len(translations(engine)) == 2, "an unknown language never reaches the engine"
