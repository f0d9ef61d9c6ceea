"""Parley's Discord path end to end on loopback: the real discord.py client against the fake
Discord, the real dialogue manager and Redis, and (where marked) the real vLLM engine.

The demo model has random weights, so these assert structure — which calls were made,
which conversation a turn landed in, that the text shown is the text streamed — never words.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import pytest

from adapters.discord.chains import MemoryChains
from adapters.discord.normalize import PLATFORM
from adapters.discord.sink import ChannelEditor
from bot import messages
from bot.config import DialogueSettings
from bot.errors import PlatformError
from bot.reply import split_pages
from bot.store.context import RedisContextStore
from bot.turns import ConversationKey, Turn
from tests.discord.conftest import DEAD_LLM, DiscordStack, discord_settings, on_own_redis, poll, serving
from tests.discord.fake import FakeDiscord, Json

MESSAGES = r"/channels/\d+/messages"
EDITS = r"/channels/\d+/messages/\d+"
REGISTERED = {"ask", "translate", "reset", "help", "config", "Ask Parley", "Translate"}  # slash and message commands


def counted(stack: DiscordStack, name: str, **labels: str) -> float:
    return stack.runtime.metrics.registry.get_sample_value(name, labels) or 0.0


def answer_text(messages: list[Json]) -> str:
    return "\n".join(m["content"] for m in messages)


async def reply_to(fake: FakeDiscord, message: Json) -> Json:
    """The bot's reply to `message`, once it exists."""
    return (await poll(lambda: fake.replies_to(message)))[0]


# -- mentions, reply chains, threads, DMs ------------------------------------------------------


@pytest.mark.engine
async def test_a_mention_gets_a_streamed_reply(
    fake: FakeDiscord, make_settings, engine: str, channel: Json, alice: Json
) -> None:
    async with serving(fake, make_settings(llm_url=engine, discord=discord_settings(fake))) as stack:
        question = await fake.say(channel, alice, "what is a prefix cache?", mention_bot=True)
        context = await stack.answered_in(channel, question["id"])

    answer = fake.replies_to(question)
    assert len(answer) == 1, "one reply, posted once"
    posts = fake.calls_to("POST", MESSAGES)
    assert len(posts) == 1 and str(posts[0].body["message_reference"]["message_id"]) == question["id"]
    assert posts[0].body["allowed_mentions"]["parse"] == [], "model output never pings anyone"
    # Posted with the first tokens, then edited; the last edit shows the whole answer.
    assert answer[0]["content"] == context.messages[-1].content
    assert context.messages[0].content == "what is a prefix cache?", "the mention is not part of the question"
    assert fake.unplanned_429s == 0
    # The bot's own MESSAGE_CREATE came back through the gateway and was not answered.
    assert len(fake.bot_messages()) == 1


@pytest.mark.engine
async def test_reply_chains_and_threads_keep_context_without_a_mention(
    fake: FakeDiscord, make_settings, engine: str, channel: Json, alice: Json
) -> None:
    async with serving(fake, make_settings(llm_url=engine, discord=discord_settings(fake))) as stack:
        first = await fake.say(channel, alice, "first question", mention_bot=True)
        await stack.answered_in(channel, first["id"])
        second = await fake.say(channel, alice, "a follow-up", reply_to=await reply_to(fake, first))
        await stack.answered_in(channel, first["id"], answers=2)
        # Deeper in the chain: a reply to the answer to the follow-up is still the same conversation.
        third = await fake.say(channel, alice, "and another", reply_to=await reply_to(fake, second))
        context = await stack.answered_in(channel, first["id"], answers=3)
        assert [m.content for m in context.messages if m.role == "user"] == [
            "first question",
            "a follow-up",
            "and another",
        ]
        assert fake.replies_to(third), "each follow-up is answered as a reply to it"

        # A reply to someone else's message, without a mention, is not for Parley.
        bob = fake.make_user("bob")
        await fake.say(channel, bob, "unrelated", reply_to=second)

    assert len(fake.bot_messages()) == 3


@pytest.mark.engine
async def test_open_threads_one_thread_per_conversation(
    fake: FakeDiscord, make_settings, engine: str, channel: Json, alice: Json
) -> None:
    settings = make_settings(llm_url=engine, discord=discord_settings(fake, open_threads=True))
    async with serving(fake, settings) as stack:
        question = await fake.say(channel, alice, "how do threads work?\nsecond line", mention_bot=True)
        await stack.answered_in(channel, question["id"])
        (create,) = fake.calls_to("POST", rf"/channels/{channel['id']}/messages/{question['id']}/threads")
        assert create.body["name"] == "how do threads work?"
        thread = fake.channels[int(question["id"])]
        (answer,) = fake.bot_messages(thread["id"])
        assert "message_reference" not in answer, "in the new thread the question is right above"

        follow_up = await fake.say(thread, alice, "no mention needed in here")
        context = await stack.answered_in(thread, question["id"], answers=2)
        assert context.messages[-2].content == "no mention needed in here"
        assert fake.replies_to(follow_up)
    assert not fake.bot_messages(channel["id"]), "nothing answered in the channel itself"


@pytest.mark.engine
async def test_a_dm_is_one_conversation(fake: FakeDiscord, make_settings, engine: str, alice: Json) -> None:
    dm = fake.dm_channel(alice)
    async with serving(fake, make_settings(llm_url=engine, discord=discord_settings(fake))) as stack:
        await fake.say(dm, alice, "hello in private")
        await stack.answered("dm", dm["id"], dm["id"])
        await fake.say(dm, alice, "still private")
        context = await stack.answered("dm", dm["id"], dm["id"], answers=2)
    answers = fake.bot_messages(dm["id"])
    assert len(answers) == 2 and all("message_reference" not in m for m in answers)
    assert [m.content for m in context.messages if m.role == "assistant"] == [m["content"] for m in answers]


@pytest.mark.engine
async def test_two_guilds_never_share_context(fake: FakeDiscord, make_settings, engine: str) -> None:
    one = fake.add_guild("one")["channels"][0]
    two = fake.add_guild("two")["channels"][0]
    alice = fake.make_user("alice")
    async with serving(fake, make_settings(llm_url=engine, discord=discord_settings(fake))) as stack:
        await fake.slash(one, alice, "ask", question="secret of guild one")
        await fake.slash(two, alice, "ask", question="secret of guild two")
        context_one = await stack.answered(one["guild_id"], one["id"], "")
        context_two = await stack.answered(two["guild_id"], two["id"], "")
    assert context_one.messages[0].content == "secret of guild one"
    assert context_two.messages[0].content == "secret of guild two"
    assert len(context_one.messages) == len(context_two.messages) == 2


# -- what Parley does not answer --------------------------------------------------------------


async def test_own_messages_other_bots_and_unaddressed_messages_are_ignored(fake: FakeDiscord, make_settings) -> None:
    guild = fake.add_guild("acme")
    allowed, other = guild["channels"]
    alice, robot = fake.make_user("alice"), fake.make_user("robot", bot=True)
    settings = make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake, allowed_channels=[int(allowed["id"])]))
    async with serving(fake, settings):
        ignored = [
            await fake.say(allowed, robot, "bots talking to bots", mention_bot=True),
            await fake.say(allowed, alice, "just chatting"),
            await fake.say(other, alice, "not in an allowed channel", mention_bot=True),
            await fake.say(allowed, fake.bot, "Parley's own words", mention_bot=True),
        ]
        # The model is down, so the one message Parley answers gets the apology: a barrier.
        last = await fake.say(allowed, alice, "this one is for you", mention_bot=True)
        answer = await reply_to(fake, last)
    assert "language model" in answer["content"]
    assert all(not fake.replies_to(m) for m in ignored)
    assert len(fake.calls_to("POST", MESSAGES)) == 1


async def test_a_mention_of_the_bots_role_counts(fake: FakeDiscord, make_settings, channel: Json, alice: Json) -> None:
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))):
        question = await fake.say(channel, alice, "via the role", mention_role=True)
        await reply_to(fake, question)


async def test_attachments_without_text_get_told(fake: FakeDiscord, make_settings, channel: Json, alice: Json) -> None:
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))):
        picture = await fake.say(channel, alice, "", mention_bot=True, attachments=1)
        answer = await reply_to(fake, picture)
    assert answer["content"] == "I can only read text for now. Please type your question as a message."


# -- slash commands ---------------------------------------------------------------------------


@pytest.mark.engine
async def test_slash_ask_is_deferred_then_answered_by_edits(
    fake: FakeDiscord, make_settings, engine: str, channel: Json, alice: Json
) -> None:
    async with serving(fake, make_settings(llm_url=engine, discord=discord_settings(fake))) as stack:
        ask = await fake.slash(channel, alice, "ask", question="what is vLLM?")
        context = await stack.answered(channel["guild_id"], channel["id"], "")
        await fake.slash(channel, alice, "reset")
        await poll(
            lambda: sum(1 for m in fake.messages.values() if m.get("interaction_metadata") and m["content"]) == 2
        )
        assert not (await stack.context(channel["guild_id"], channel["id"], "")).messages, "/reset forgot it"

    token = ask["token"]
    calls = [c for c in fake.calls if token in c.path]
    assert calls[0].method == "POST" and calls[0].path.endswith("/callback"), "deferred before anything else"
    assert calls[0].body["type"] == 5  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "Parley is thinking…"
    assert all(c.method == "PATCH" for c in calls[1:]) and calls[1:], "then answered by editing the response"
    original = fake.messages[int(ask["original"])]
    assert original["content"] == context.messages[-1].content
    assert not original["flags"] & 64, "an answer to /ask is public"
    reset = next(i for i in fake.interactions.values() if i["data"]["name"] == "reset")
    assert reset["response"]["data"]["flags"] & 64, "/reset answers only the caller"
    assert {c["name"] for c in fake.commands["global"]} == REGISTERED


async def test_slash_commands_register_in_the_test_guild(fake: FakeDiscord, make_settings) -> None:
    guild = fake.add_guild("acme")
    alice = fake.make_user("alice")
    settings = make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake, test_guild=int(guild["id"])))
    async with serving(fake, settings):
        helped = await fake.slash(guild["channels"][0], alice, "help")
        await poll(lambda: fake.messages[int(helped["original"])]["content"] if "original" in helped else None)
    assert {c["name"] for c in fake.commands[guild["id"]]} == REGISTERED
    assert "global" not in fake.commands
    assert fake.messages[int(helped["original"])]["content"].startswith("I'm Parley")


# -- streaming, splitting, rate limits ----------------------------------------------------------


def channel_turn(channel: Json, event_id: str) -> Turn:
    return Turn(
        platform=PLATFORM,
        tenant=channel["guild_id"],
        channel=channel["id"],
        thread=event_id,
        user="1",
        text="q",
        event_id=event_id,
        address={"post_channel": channel["id"]},
    )


async def stream_answer(stack: DiscordStack, channel: Json, chunks: AsyncIterator[str]) -> str:
    """Stream through the adapter's real sink as a dialogue worker does: in a task of its own
    (the adapter waits for such tasks at shutdown)."""

    async def answer() -> str:
        return await stack.adapter.sink_for(channel_turn(channel, str(stack.fake.snowflake()))).stream(chunks)

    return await asyncio.create_task(answer())


async def slowly(text: str, *, size: int = 250, pause: float = 0.05):
    for i in range(0, len(text), size):
        yield text[i : i + size]
        await asyncio.sleep(pause)


LONG_ANSWER = (
    "Here is the plan.\n\n"
    + "A paragraph of prose that goes on for a while. " * 30
    + "\n\n"
    + "```python\n"
    + "".join(f"def step_{i}(x):\n    return x * {i}  # a line of code\n" for i in range(60))
    + "```\n\n"
    + "And a conclusion. " * 30
)


async def test_a_long_answer_with_code_is_split_at_boundaries(fake: FakeDiscord, make_settings, channel: Json) -> None:
    assert len(LONG_ANSWER) > 5000 and LONG_ANSWER.count("```") == 2
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))) as stack:
        shown = await stream_answer(stack, channel, slowly(LONG_ANSWER))
    assert shown == LONG_ANSWER
    pages = fake.bot_messages(channel["id"])
    assert [p["content"] for p in pages] == split_pages(LONG_ANSWER, 2000)
    assert len(pages) >= 3 and all(len(p["content"]) <= 2000 for p in pages)
    assert all(p["content"].count("```") % 2 == 0 for p in pages), "every page closes the code block it opens"
    # Nothing lost: without the fences added at the cuts (a close, then a reopen), the pages are the answer.
    contents = [p["content"] for p in pages]
    for i in range(len(contents) - 1):
        if contents[i].endswith("\n```") and contents[i + 1].startswith("```python\n"):
            contents[i], contents[i + 1] = contents[i][:-4], contents[i + 1][len("```python\n") :]
    assert re.sub(r"\s", "", "".join(contents)) == re.sub(r"\s", "", LONG_ANSWER)


async def test_a_429_on_an_edit_is_waited_out_and_the_answer_arrives_once(
    fake: FakeDiscord, make_settings, channel: Json
) -> None:
    fake.rate_limit("PATCH", EDITS, retry_after=0.5)
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))) as stack:
        text = "word " * 300
        shown = await stream_answer(stack, channel, slowly(text, size=40))
    (message,) = fake.bot_messages(channel["id"])
    assert message["content"] == shown == text
    edits = fake.calls_to("PATCH", EDITS)
    assert edits[0].status == 429 and all(c.status == 200 for c in edits[1:])
    assert len(fake.calls_to("POST", MESSAGES)) == 1
    assert counted(stack, "parley_platform_rate_limited_total", platform="discord") == 1


async def test_a_5xx_is_retried_by_discord_py_and_counted(fake: FakeDiscord, make_settings, channel: Json) -> None:
    fake.server_error("POST", MESSAGES, status=502)
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))) as stack:
        shown = await stream_answer(stack, channel, slowly("a short answer"))
    (message,) = fake.bot_messages(channel["id"])
    assert message["content"] == shown
    assert [c.status for c in fake.calls_to("POST", MESSAGES)] == [502, 200]
    assert counted(stack, "parley_platform_errors_total", platform="discord", status="502") == 1
    assert counted(stack, "parley_platform_rate_limited_total", platform="discord") == 0


async def test_a_channel_that_is_gone_or_forbidden_fails_at_once(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json
) -> None:
    gone = dict(channel, id=str(fake.snowflake()))  # deleted, as far as Discord knows: Unknown Channel
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))) as stack:
        with pytest.raises(PlatformError) as missing:
            await stream_answer(stack, gone, slowly("nobody will read this"))
        theirs = await fake.say(channel, alice, "a message Parley may not edit")
        editor = ChannelEditor(stack.adapter.client, channel_turn(channel, "E1"), MemoryChains(), archive_minutes=60)
        with pytest.raises(PlatformError) as forbidden:
            await asyncio.create_task(editor.edit(theirs["id"], "changed"))
    assert (missing.value.status, missing.value.permanent) == (404, True)
    assert (forbidden.value.status, forbidden.value.permanent) == (403, True)
    assert len(fake.calls_to("POST", rf"/channels/{gone['id']}/messages")) == 1, "not retried"
    assert len(fake.calls_to("PATCH", EDITS)) == 1, "not retried"


async def test_a_global_429_pauses_every_request(fake: FakeDiscord, make_settings) -> None:
    one, two = fake.add_guild("acme")["channels"]
    fake.rate_limit("PATCH", rf"/channels/{one['id']}/messages/\d+", retry_after=1.5, is_global=True)
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))) as stack:
        texts = ["one " * 200, "two " * 200]
        shown = await asyncio.gather(
            *(stream_answer(stack, c, slowly(t, size=20)) for c, t in zip((one, two), texts, strict=True))
        )
    assert shown == texts
    assert [m["content"] for m in fake.bot_messages()] == texts
    (limited,) = [c for c in fake.calls if c.status == 429]
    assert counted(stack, "parley_platform_rate_limited_total", platform="discord") == 1
    # Requests already on the wire may land just after; then nothing until the pause is over.
    during = [c for c in fake.calls if limited.at + 0.4 < c.at < limited.at + 1.4]
    assert during == [], [(c.method, c.path) for c in during]


@pytest.mark.engine
async def test_a_429_on_the_first_post_still_gives_one_answer(
    fake: FakeDiscord, make_settings, engine: str, channel: Json, alice: Json
) -> None:
    fake.rate_limit("POST", MESSAGES, retry_after=0.5)
    async with serving(fake, make_settings(llm_url=engine, discord=discord_settings(fake))) as stack:
        question = await fake.say(channel, alice, "rate limited?", mention_bot=True)
        context = await stack.answered_in(channel, question["id"])
    (answer,) = fake.bot_messages()
    assert answer["content"] == context.messages[-1].content
    posts = fake.calls_to("POST", MESSAGES)
    assert [c.status for c in posts] == [429, 200]
    assert posts[0].body["nonce"] == posts[1].body["nonce"], "a retried post carries the same enforced nonce"
    assert counted(stack, "parley_platform_rate_limited_total", platform="discord") == 1


# -- Redis down ----------------------------------------------------------------------------------


async def test_while_redis_is_down_messages_wait_in_memory_and_are_answered_when_it_is_back(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, redis_to_stop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(fake, on_own_redis(make_settings, redis_to_stop, fake, retry_buffer=1)):
        await asyncio.to_thread(redis_to_stop.stop)
        held = await fake.say(channel, alice, "asked while Redis is down", mention_bot=True)
        await poll(lambda: any("holding turns in memory" in r.getMessage() for r in caplog.records))
        # The buffer holds one turn: the next message is refused with words, not dropped in silence.
        refused = await fake.say(channel, alice, "and another one", mention_bot=True)
        busy = await reply_to(fake, refused)
        assert busy["content"] == messages.BUSY
        await asyncio.sleep(1.0)
        assert not fake.replies_to(held), "nothing can be answered while the inbox is down"

        await asyncio.to_thread(redis_to_stop.start)  # same port, but empty: the inbox rebuilds its group
        answer = await reply_to(fake, held)
        await asyncio.sleep(1.0)  # a second answer would be on its way by now
    assert "language model" in answer["content"]  # the model is down: the answer is the apology
    assert len(fake.replies_to(held)) == 1 and len(fake.replies_to(refused)) == 1
    assert any("held turn taken by the inbox" in r.getMessage() for r in caplog.records)


# -- the gateway ------------------------------------------------------------------------------


@pytest.mark.engine
async def test_a_gateway_reconnect_resumes_and_nothing_is_lost_or_doubled(
    fake: FakeDiscord, make_settings, engine: str, channel: Json, alice: Json
) -> None:
    async with serving(fake, make_settings(llm_url=engine, discord=discord_settings(fake))) as stack:
        await fake.send_reconnect(0)
        # Sent while the client is reconnecting: it is replayed on RESUME.
        during = await fake.say(channel, alice, "asked during the reconnect", mention_bot=True)
        await poll(lambda: fake.resumes)
        await stack.answered_in(channel, during["id"])
        # Discord may deliver an event again around a resume: it is answered once.
        session = fake.session_for(0)
        seq = next(p["s"] for p in session.sent if p["t"] == "MESSAGE_CREATE" and p["d"]["id"] == during["id"])
        await fake.replay(0, seq)
        after = await fake.say(channel, alice, "asked after it", mention_bot=True)
        await stack.answered_in(channel, after["id"])
    assert len(fake.identifies) == 1 and len(fake.resumes) == 1, "the session was resumed, not restarted"
    assert fake.resumes[0]["session_id"] == session.id
    assert len(fake.replies_to(during)) == 1 and len(fake.replies_to(after)) == 1


async def test_the_sharded_client_starts_only_its_configured_shards(fake: FakeDiscord, make_settings) -> None:
    zero = fake.add_guild("on shard 0", shard=0, shard_count=2)
    one = fake.add_guild("on shard 1", shard=1, shard_count=2)
    alice = fake.make_user("alice")
    settings = make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake, shard_count=2, shard_ids=[1]))
    async with serving(fake, settings) as stack:
        assert stack.adapter.client is not None
        assert [g.id for g in stack.adapter.client.guilds] == [int(one["id"])]
        question = await fake.say(one["channels"][0], alice, "to shard one", mention_bot=True)
        await reply_to(fake, question)
    assert [i["shard"] for i in fake.identifies] == [[1, 2]]
    assert not fake.calls_to("GET", "/gateway/bot"), "with a shard count the configured gateway is used"
    assert (int(zero["id"]) >> 22) % 2 == 0, "the other guild is another replica's"


async def test_without_the_message_content_intent_mentions_still_work(
    fake: FakeDiscord, make_settings, caplog: pytest.LogCaptureFixture, channel: Json, alice: Json
) -> None:
    fake.content_intent = False
    caplog.set_level(logging.WARNING, logger="adapters.discord.app")
    async with serving(fake, make_settings(llm_url=DEAD_LLM, discord=discord_settings(fake))) as stack:
        question = await fake.say(channel, alice, "can you read me?", mention_bot=True)
        answer = await reply_to(fake, question)
        follow_up = await fake.say(channel, alice, "an unaddressed follow-up", reply_to=answer)  # text withheld
        helped = await fake.slash(channel, alice, "help")
        await poll(lambda: "original" in helped and fake.messages[int(helped["original"])]["content"])
    assert all(not i["intents"] & (1 << 15) for i in fake.identifies), "connected without the intent"
    warnings = [r for r in caplog.records if "Message Content intent" in r.getMessage()]
    assert len(warnings) == 1
    assert "Message Content intent" in stack.runtime.degraded.problems()["discord:message_content"], "in /readyz"
    assert not fake.replies_to(follow_up), "nothing to answer: Discord withheld its text"


# -- shutdown ---------------------------------------------------------------------------------


@pytest.mark.engine
async def test_shutdown_finishes_the_answer_in_flight(
    fake: FakeDiscord, make_settings, engine: str, redis, channel: Json, alice: Json
) -> None:
    settings = make_settings(
        llm_url=engine, discord=discord_settings(fake), dialogue=DialogueSettings(_env_file=None, drain_timeout=60)
    )
    async with serving(fake, settings):
        question = await fake.say(channel, alice, "answer me while I stop", mention_bot=True)
        await reply_to(fake, question)  # the answer has started: stop now
    # Shut down and closed; what was saved is what the user sees.
    store = RedisContextStore(redis, redis_settings=settings.redis, settings=settings.context)
    context = await store.load(ConversationKey("discord", channel["guild_id"], channel["id"], question["id"]))
    (answer,) = fake.replies_to(question)
    assert [m.role for m in context.messages] == ["user", "assistant"]
    assert answer["content"] == context.messages[-1].content
