"""The buttons under every final Discord answer: 👍 / 👎, "Talk to a person" and "Regenerate".

The real discord.py client against the fake Discord (presses are INTERACTION_CREATE of type 3,
answered through the interaction callback), the real dialogue manager, Redis and stats; the
engine is the scripted stand-in. The buttons are `DynamicItem`s read back from their custom
ids alone, so a press works after the adapter restarts, which one test does."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from adapters.discord.normalize import AnswerPress, parse_answer_press
from bot import messages
from bot.store.context import Context
from tests.discord.conftest import DiscordStack, TakingDesk, discord_settings, poll, serving
from tests.discord.fake import FakeDiscord, Json
from tests.standin import ScriptedEngine

SNOWFLAKE = "1234567890123456789"


@pytest_asyncio.fixture
async def standin() -> AsyncIterator[tuple[ScriptedEngine, str]]:
    engine = ScriptedEngine("Opening hours are nine to five.")
    async with engine.serving() as url:
        yield engine, url


def questions(engine: ScriptedEngine, text: str) -> int:
    """How many chats the engine was asked whose newest message is `text`."""
    return sum(r["messages"][-1]["content"] == text for r in engine.requests if r.get("stream"))


def labels(fake: FakeDiscord, message: Json) -> list[str]:
    return [b.get("label") or b["emoji"]["name"] for b in fake.buttons(fake.messages[int(message["id"])])]


async def told(interaction: Json) -> str:
    """What the presser alone was shown (an ephemeral answer to the press)."""
    response = await poll(lambda: interaction.get("response"))
    assert response["type"] == 4 and response["data"]["flags"] & 64
    return response["data"]["content"]


async def answered(stack: DiscordStack, question: Json) -> Json:
    """The answer to `question` once its buttons are under it (after its last edit)."""
    fake = stack.fake

    def with_buttons() -> Json | None:
        return next((m for m in fake.replies_to(question) if fake.buttons(m)), None)

    return await poll(with_buttons)


async def saved(stack: DiscordStack, channel: Json, thread: str, *, turns: int) -> Context:
    """The conversation's context once `turns` turns are saved in it (a regenerated answer
    replaces its exchange: the count of answers alone would not move)."""

    async def enough() -> Context | None:
        context = await stack.context(channel["guild_id"], channel["id"], thread)
        return context if len(context.answered) >= turns else None

    return await poll(enough)


def asked_with(engine: ScriptedEngine, text: str) -> list[list[dict]]:
    """The chats the engine streamed whose newest message is `text`: what the model saw."""
    return [r["messages"] for r in engine.requests if r.get("stream") and r["messages"][-1]["content"] == text]


async def counted(stack: DiscordStack, channel: Json, up: int, down: int) -> bool:
    days = await stack.runtime.stats.days(days=1, tenant=channel["guild_id"])
    return bool(days) and (days[0].up, days[0].down) == (up, down)


@pytest.mark.parametrize("kind", ["up", "down", "person", "again"])
@pytest.mark.parametrize("thread", ["", SNOWFLAKE])
def test_a_buttons_custom_id_reads_back(kind: str, thread: str) -> None:
    press = AnswerPress(kind, SNOWFLAKE, thread, SNOWFLAKE)
    assert len(press.custom_id) <= 100  # Discord's limit
    assert parse_answer_press(press.custom_id) == press


@pytest.mark.parametrize(
    "custom_id",
    [
        "",
        "parley:answer:up:1:2",
        "parley:answer:maybe:1::2",
        "parley:answer:up:x::2",
        f"parley:answer:up:1::{'1' * 21}",
    ],
)
def test_a_custom_id_parley_did_not_make_is_not_read(custom_id: str) -> None:
    assert parse_answer_press(custom_id) is None


async def test_votes_count_once_per_user_and_can_be_changed(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, standin, caplog
) -> None:
    caplog.set_level(logging.INFO)
    _, url = standin
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))) as stack:
        question = await fake.say(channel, alice, "When are you open?", mention_bot=True)
        answer = await answered(stack, question)
        assert answer["content"] == "Opening hours are nine to five."
        assert labels(fake, answer) == ["👍", "👎", messages.REGENERATE_BUTTON], "no desk: no 'Talk to a person'"
        bob = fake.make_user("bob")

        assert await told(await fake.press(answer, alice, custom_id=fake.buttons(answer)[0]["custom_id"])) == (
            messages.VOTE_THANKS
        )
        await poll(lambda: counted(stack, channel, 1, 0))
        await fake.press(answer, alice, custom_id=fake.buttons(answer)[1]["custom_id"])  # changes her mind
        await poll(lambda: counted(stack, channel, 0, 1))
        await fake.press(answer, alice, custom_id=fake.buttons(answer)[1]["custom_id"])  # the same again
        await fake.press(answer, bob, custom_id=fake.buttons(answer)[0]["custom_id"])
        await poll(lambda: counted(stack, channel, 1, 1))
        await poll(lambda: "unchanged" in caplog.text)
    assert caplog.text.count("feedback down on") == 1 and caplog.text.count("(changed)") == 1


async def test_regenerate_is_the_askers_alone_and_replaces_the_answer(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, standin, caplog
) -> None:
    caplog.set_level(logging.INFO)
    engine, url = standin
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))) as stack:
        question = await fake.say(channel, alice, "When are you open?", mention_bot=True)
        answer = await answered(stack, question)
        again = next(b["custom_id"] for b in fake.buttons(answer) if b.get("label") == messages.REGENERATE_BUTTON)

        bob = fake.make_user("bob")
        assert await told(await fake.press(answer, bob, custom_id=again)) == messages.REGENERATE_NOT_YOURS
        assert f"pressed by {bob['id']}, who did not ask: refused" in caplog.text

        engine.answer = "We open at nine and close at five."
        await fake.press(answer, alice, custom_id=again)
        await poll(lambda: fake.messages[int(answer["id"])]["content"] == engine.answer)
        await poll(lambda: fake.buttons(fake.messages[int(answer["id"])])[0]["custom_id"] != again)
        context = await saved(stack, channel, question["id"], turns=2)
    assert questions(engine, "When are you open?") == 2, "asked again, once: the stranger's press asked nothing"
    # The history holds the question once, with the new answer: the earlier exchange was replaced...
    assert [(m.role, m.content) for m in context.messages] == [
        ("user", "When are you open?"),
        ("assistant", "We open at nine and close at five."),
    ]
    # ...and the model was asked it as first asked, not after its own earlier answer.
    assert [m["role"] for m in asked_with(engine, "When are you open?")[-1]] == ["system", "user"]
    assert [m for m in fake.replies_to(question) if m["content"]] == [fake.messages[int(answer["id"])]]
    assert "its 2 messages are replaced" in caplog.text


async def test_regenerating_an_answer_the_conversation_moved_on_from_asks_it_anew_at_its_end(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, standin, caplog
) -> None:
    """The later exchange was answered in the earlier one's light: it stays, and the question is
    answered (and saved) after it, as if asked again now (`bot.dialogue.regenerate`)."""
    caplog.set_level(logging.INFO)
    engine, url = standin
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))) as stack:
        question = await fake.say(channel, alice, "When are you open?", mention_bot=True)
        first = await answered(stack, question)
        engine.answer = "Closed on Sundays."
        follow_up = await fake.say(channel, alice, "And on Sundays?", reply_to=first)  # the same conversation
        await answered(stack, follow_up)
        await saved(stack, channel, question["id"], turns=2)

        engine.answer = "We open at nine and close at five."
        again = next(b["custom_id"] for b in fake.buttons(first) if b.get("label") == messages.REGENERATE_BUTTON)
        await fake.press(first, alice, custom_id=again)
        await poll(lambda: fake.messages[int(first["id"])]["content"] == engine.answer)
        context = await saved(stack, channel, question["id"], turns=3)
    assert [(m.role, m.content) for m in context.messages] == [
        ("user", "When are you open?"),
        ("assistant", "Opening hours are nine to five."),
        ("user", "And on Sundays?"),
        ("assistant", "Closed on Sundays."),
        ("user", "When are you open?"),
        ("assistant", "We open at nine and close at five."),
    ]
    assert "the conversation has moved on from" in caplog.text


async def test_buttons_work_after_a_restart_and_stale_ones_are_told(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, standin, caplog
) -> None:
    caplog.set_level(logging.INFO)
    engine, url = standin
    settings = make_settings(llm_url=url, discord=discord_settings(fake))
    async with serving(fake, settings) as stack:
        question = await fake.say(channel, alice, "When are you open?", mention_bot=True)
        answer = await answered(stack, question)
    up, again = fake.buttons(answer)[0]["custom_id"], fake.buttons(answer)[2]["custom_id"]
    async with serving(fake, settings) as stack:  # a new process: no view, nothing in memory
        await fake.press(answer, alice, custom_id=up)
        await poll(lambda: counted(stack, channel, 1, 0))
        await fake.press(answer, alice, custom_id=again)
        await poll(lambda: questions(engine, "When are you open?") == 2)
        context = await saved(stack, channel, question["id"], turns=2)
        assert [m.role for m in context.messages] == ["user", "assistant"], "the regenerated exchange replaced"

        stale = await fake.press(answer, alice, custom_id=up)  # replaced by the regenerated answer's
        assert await told(stale) == messages.BUTTON_STALE
        assert "a press of a button no longer on message" in caplog.text


async def test_talk_to_a_person_is_the_handoff_turn(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, standin
) -> None:
    engine, url = standin
    bob = fake.make_user("bob")
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))) as stack:
        # No desk takes this conversation's tickets yet: no button.
        question = await fake.say(channel, alice, "When are you open?", mention_bot=True)
        answer = await answered(stack, question)
        assert labels(fake, answer) == ["👍", "👎", messages.REGENERATE_BUTTON]

        desk = TakingDesk()
        stack.runtime.desks[desk.name] = desk  # as an adapter's `register_desk` does once its desk is ready
        question = await fake.say(channel, alice, "And on Sundays?", mention_bot=True)
        answer = await answered(stack, question)
        assert labels(fake, answer) == ["👍", "👎", messages.PERSON_BUTTON, messages.REGENERATE_BUTTON]
        asked = await fake.press(answer, bob, messages.PERSON_BUTTON)  # anyone in the channel may ask
        assert (await poll(lambda: asked.get("response")))["type"] == 6  # a deferred update: the answer follows
        context = await stack.answered_in(channel, question["id"], answers=2)
        [notice] = [m for m in fake.bot_messages() if m.get("interaction_metadata", {}).get("id") == asked["id"]]
    assert context.messages[-2].content == messages.ASK_FOR_PERSON
    assert notice["content"] == context.messages[-1].content == messages.HANDED_OFF
    [ticket] = desk.tickets
    assert (ticket.user, ticket.reason) == (bob["id"], "request")
    assert questions(engine, messages.ASK_FOR_PERSON) == 0, "an explicit request: no model asked"


async def test_a_slash_commands_answer_has_the_buttons_and_regenerates_in_place(
    fake: FakeDiscord, make_settings, channel: Json, alice: Json, standin
) -> None:
    engine, url = standin
    async with serving(fake, make_settings(llm_url=url, discord=discord_settings(fake))):
        ask = await fake.slash(channel, alice, "ask", question="When are you open?")
        original = await poll(lambda: "original" in ask and fake.messages[int(ask["original"])])
        [again] = await poll(lambda: [b["custom_id"] for b in fake.buttons(original) if "again" in b["custom_id"]])
        assert f":{ask['id']}::{alice['id']}" in again  # the command's interaction, the channel's own conversation
        engine.answer = "We open at nine and close at five."
        await fake.press(original, alice, custom_id=again)
        await poll(lambda: original["content"] == engine.answer)
        await poll(lambda: fake.buttons(original) and again not in [b["custom_id"] for b in fake.buttons(original)])
    assert questions(engine, "When are you open?") == 2
