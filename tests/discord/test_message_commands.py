"""Message commands ("Ask Parley", "Translate" on any message), a thread per question in the
channels the operator names, forum posts as questions, and user-installable commands.

The real discord.py client against the fake Discord, the real dialogue manager and Redis; the
engine is the scripted stand-in, which records what it was asked."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from bot import messages
from bot.config import TenantsSettings
from tests.discord.conftest import discord_settings, poll, serving
from tests.discord.fake import FakeDiscord, Json
from tests.standin import ScriptedEngine

ANSWER = "Opening hours are nine to five."


@pytest_asyncio.fixture
async def standin() -> AsyncIterator[tuple[ScriptedEngine, str]]:
    engine = ScriptedEngine(ANSWER)
    async with engine.serving() as url:
        yield engine, url


def asked(engine: ScriptedEngine) -> list[list[dict]]:
    """The streamed chats the engine was asked (routing and moderation may ask it too)."""
    return [r["messages"] for r in engine.requests if r.get("stream")]


def commands(fake: FakeDiscord) -> dict[str, Json]:
    return {c["name"]: c for c in fake.commands.get("global", [])}


async def test_message_commands_ask_and_translate_a_message(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, standin
) -> None:
    engine, url = standin
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))):
        registered = await poll(lambda: commands(fake).get("Ask Parley") and commands(fake))
        assert registered["Ask Parley"]["type"] == registered["Translate"]["type"] == 3  # on a message
        assert "integration_types" not in registered["ask"] or registered["ask"]["integration_types"] in (None, [0])

        said = await fake.say(channel, alice, "When are you open on Sundays?")  # no mention: not for Parley
        bob = fake.make_user("bob")
        ask = await fake.message_command(channel, bob, "Ask Parley", said)
        shown = await poll(lambda: "original" in ask and fake.messages[int(ask["original"])]["content"])
        assert asked(engine)[-1][-1]["content"] == "When are you open on Sundays?"

        foreign = await fake.say(channel, alice, "Wann habt ihr geöffnet?")
        await fake.message_command(channel, bob, "Translate", foreign)
        translation = await poll(lambda: [c for c in asked(engine) if "You are a translator" in c[0]["content"]])

        empty = await fake.say(channel, alice, "", attachments=1)
        refused = await fake.message_command(channel, bob, "Ask Parley", empty)
        response = await poll(lambda: refused.get("response"))
    assert shown == ANSWER
    assert translation[0][-1]["content"] == "Wann habt ihr geöffnet?"
    assert response["data"]["content"] == messages.MESSAGE_HAS_NO_TEXT and response["data"]["flags"] & 64


async def test_user_install_lets_users_run_the_commands_in_dms_and_group_dms(
    fake: FakeDiscord, make_settings, channel: Json
) -> None:
    settings = make_settings(llm_url="http://127.0.0.1:9/v1", discord=discord_settings(fake, user_install=True))
    async with serving(fake, settings):
        registered = await poll(lambda: commands(fake).get("Ask Parley") and commands(fake))
    for name in ("ask", "translate", "reset", "help", "Ask Parley", "Translate"):
        assert registered[name]["integration_types"] == [0, 1], name  # guild install, user install
        assert sorted(registered[name]["contexts"]) == [0, 1, 2], name  # guild, bot DM, private channels


async def test_a_question_in_a_thread_channel_opens_a_thread_that_continues_without_mentions(
    fake: FakeDiscord, make_settings, alice: Json, standin
) -> None:
    _, url = standin
    guild = fake.add_guild("acme")
    threaded, plain = guild["channels"]
    settings = make_settings(llm_url=url, discord=discord_settings(fake, thread_channels=[int(threaded["id"])]))
    async with serving(fake, settings) as stack:
        question = await fake.say(threaded, alice, "When are you open?\nAsking for the weekend.", mention_bot=True)
        thread = await poll(lambda: fake.channels.get(int(question["id"])))
        await stack.answered_in(thread, thread["id"])
        await fake.say(thread, alice, "And on holidays?")  # no mention: the thread is Parley's
        context = await stack.answered_in(thread, thread["id"], answers=2)

        elsewhere = await fake.say(plain, alice, "When are you open?", mention_bot=True)
        [reply] = await poll(lambda: fake.replies_to(elsewhere))
    assert thread["name"] == "When are you open?" and thread["parent_id"] == threaded["id"]
    assert [m.content for m in context.messages if m.role == "user"][-1] == "And on holidays?"
    assert reply["channel_id"] == plain["id"] and int(elsewhere["id"]) not in fake.threads_by_message


async def test_a_forum_post_is_a_question_and_an_empty_one_is_told(
    fake: FakeDiscord, make_settings, alice: Json, standin, caplog
) -> None:
    caplog.set_level(logging.INFO)
    engine, url = standin
    guild = fake.add_guild("acme")
    forum = fake.add_forum(guild)
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))) as stack:
        post = await fake.post(forum, alice, "Opening hours", "When are you open?")
        [answer] = await poll(lambda: fake.bot_messages(post["id"]))
        await stack.answered_in(post, post["id"])
        await fake.say(post, alice, "And on Sundays?")  # a follow-up in the post, no mention
        await stack.answered_in(post, post["id"], answers=2)

        empty = await fake.post(forum, alice, "Help", "")
        [told] = await poll(lambda: fake.bot_messages(empty["id"]))
    assert answer["message_reference"]["message_id"] == post["id"]
    assert told["content"] == messages.FORUM_POST_EMPTY
    assert "a new forum post with no text Parley can read" in caplog.text
    assert len(asked(engine)) == 2, "the empty post never reached the engine"


async def test_a_channels_mention_rule_from_its_profile(
    fake: FakeDiscord, make_settings, alice: Json, standin, tmp_path: Path
) -> None:
    _, url = standin
    guild = fake.add_guild("acme")
    chatty, threaded = guild["channels"]
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants."{guild["id"]}".channels."{threaded["id"]}"]\nmention_rule = "threads"\n')
    settings = make_settings(
        llm_url=url, discord=discord_settings(fake), tenants=TenantsSettings(_env_file=None, file=tenants)
    )
    async with serving(fake, settings) as stack:
        unaddressed = await fake.say(chatty, alice, "Just chatting here")  # "mention", the default
        # An admin makes the channel answer everything, at run time (any replica's profiles).
        await stack.runtime.profiles.set(str(guild["id"]), str(chatty["id"]), "mention_rule", "always", by="admin")
        asked_plainly = await fake.say(chatty, alice, "When are you open?")
        [reply] = await poll(lambda: fake.replies_to(asked_plainly))

        question = await fake.say(threaded, alice, "Do you ship abroad?", mention_bot=True)
        thread = await poll(lambda: fake.channels.get(int(question["id"])))  # "threads": one per question
        await stack.answered_in(thread, thread["id"])
    assert reply["content"] == ANSWER and reply["channel_id"] == chatty["id"]
    assert not fake.replies_to(unaddressed)  # taken in order: it came first and was not for Parley
    assert thread["parent_id"] == threaded["id"]
