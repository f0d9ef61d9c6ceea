"""Profiles keyed by a Discord category: a channel without a profile of its own takes its
category's, a thread its channel's (then the category's), and a channel's own beats its
category's. Only settings come from a category: conversations stay per channel and thread.
And /help, which says what this deployment offers, the channel's own behaviour among it.

The real discord.py client against the fake Discord, the real dialogue manager, profiles and
Redis; the engine is the scripted stand-in, which records what it was asked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from bot import messages
from bot.config import TenantsSettings
from tests.discord.conftest import TakingDesk, discord_settings, poll, serving
from tests.discord.fake import FakeDiscord, Json
from tests.standin import ScriptedEngine

ANSWER = "Opening hours are nine to five."
DESK, SALES = "You are Acme's support desk.", "You are Acme's sales team."


@pytest_asyncio.fixture
async def standin() -> AsyncIterator[tuple[ScriptedEngine, str]]:
    engine = ScriptedEngine(ANSWER)
    async with engine.serving() as url:
        yield engine, url


def system_prompt(engine: ScriptedEngine, question: str) -> str:
    """The system prompt of the streamed chat that answered `question` (its newest message)."""
    [chat] = [r["messages"] for r in engine.requests if r.get("stream") and r["messages"][-1]["content"] == question]
    assert chat[0]["role"] == "system"
    return chat[0]["content"]


def tenants_file(tmp_path: Path, text: str) -> TenantsSettings:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return TenantsSettings(_env_file=None, file=path)


async def test_a_category_profile_applies_to_its_channels_and_their_threads_and_a_channels_own_wins(
    fake: FakeDiscord, make_settings, alice: Json, standin, tmp_path: Path
) -> None:
    engine, url = standin
    guild = fake.add_guild("acme", channels=3)
    support, sales, general = guild["channels"]
    category = fake.add_category(guild, support, sales)
    # The category: a prompt, and a thread for each question; the sales channel has its own profile.
    profiles = tenants_file(
        tmp_path,
        f'[tenants."{guild["id"]}".channels."{category["id"]}"]\n'
        f'system_prompt = "{DESK}"\nmention_rule = "threads"\n'
        f'[tenants."{guild["id"]}".channels."{sales["id"]}"]\nsystem_prompt = "{SALES}"\n',
    )
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake), tenants=profiles)) as stack:
        question = await fake.say(support, alice, "Where is my order?", mention_bot=True)
        thread = await poll(lambda: fake.channels.get(int(question["id"])))  # "threads", from the category
        await stack.answered_in(thread, thread["id"])
        await fake.say(thread, alice, "It was due on Monday.")  # in the thread: its channel's, its category's
        in_thread = await stack.answered_in(thread, thread["id"], answers=2)

        priced = await fake.say(sales, alice, "Any discounts?", mention_bot=True)
        [reply] = await poll(lambda: fake.replies_to(priced))  # its own profile: no thread, as by default
        elsewhere = await fake.say(general, alice, "Who are you?", mention_bot=True)
        await poll(lambda: fake.replies_to(elsewhere))
        category_context = await stack.context(guild["id"], category["id"], thread["id"])
    assert thread["parent_id"] == support["id"]
    assert DESK in system_prompt(engine, "Where is my order?")
    assert DESK in system_prompt(engine, "It was due on Monday.")
    asked = [m.content for m in in_thread.messages if m.role == "user"]
    assert asked == ["Where is my order?", "It was due on Monday."]
    assert not category_context.messages, "the conversation is the thread's, in its channel, never the category's"
    prompt = system_prompt(engine, "Any discounts?")
    assert SALES in prompt and DESK not in prompt, "the channel's own profile, whole: nothing of the category's"
    assert reply["channel_id"] == sales["id"] and int(priced["id"]) not in fake.threads_by_message
    assert DESK not in system_prompt(engine, "Who are you?") and SALES not in system_prompt(engine, "Who are you?")


def registered(fake: FakeDiscord, kind: int) -> list[str]:
    return [c["name"] for c in fake.commands.get("global", []) if c["type"] == kind]


async def help_in(fake: FakeDiscord, channel: Json, user: Json) -> str:
    asked = await fake.slash(channel, user, "help")
    return await poll(lambda: "original" in asked and fake.messages[int(asked["original"])]["content"])


async def test_help_lists_what_this_deployment_offers_and_how_this_channel_answers(
    fake: FakeDiscord, make_settings, alice: Json, standin, tmp_path: Path
) -> None:
    _, url = standin
    guild = fake.add_guild("acme", channels=3)
    chatty, threaded, plain = guild["channels"]
    other = fake.add_guild("elsewhere")["channels"][0]
    category = fake.add_category(guild, chatty)
    always = f'[tenants."{guild["id"]}".channels."{category["id"]}"]\nmention_rule = "always"\n'
    settings = make_settings(
        llm_url=url,
        discord=discord_settings(fake, thread_channels=[int(threaded["id"]), int(other["id"])], user_install=True),
        tenants=tenants_file(tmp_path, always),
    )
    async with serving(fake, settings) as stack:
        stack.runtime.desks["test-desk"] = TakingDesk()  # a desk takes tickets: "Talk to a person"
        slash, menus = await poll(lambda: registered(fake, 1)), registered(fake, 3)
        in_category, in_plain = await help_in(fake, chatty, alice), await help_in(fake, plain, alice)
    assert set(slash) == {"ask", "translate", "reset", "help", "config"} and set(menus) == {"Ask Parley", "Translate"}
    for name in slash:  # every slash command registered, with its words
        assert f"• `/{name}` {messages.DISCORD_COMMANDS[name]}" in in_plain
    assert all(f"“{name}” {messages.DISCORD_MESSAGE_COMMANDS[name]}" in in_plain for name in menus)
    assert f"<#{threaded['id']}>" in in_plain and f"<#{other['id']}>" not in in_plain, "this server's thread channels"
    assert "Talk to a person" in in_plain and "Regenerate" in in_plain and "other servers and your DMs" in in_plain
    assert messages.DISCORD_HERE["always"] in in_category, "the channel's category answers every message"
    assert messages.DISCORD_HERE["always"] not in in_plain
    assert len(in_category) <= 2000
