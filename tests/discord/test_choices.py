"""A write action's Confirm / Cancel buttons on Discord (`bot.reply.Choices`).

Three tiers: the custom ids as pure functions; the real adapter (the unmodified discord.py
client against the fake Discord) offering buttons, taking presses into an inbox and settling
them; and the whole way through the real dialogue manager, with the scripted LLM deciding to
open a ticket at the sample service (everything but the model is real: Redis, the HTTP action
runner, moderation, the context store)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from adapters.discord.app import DiscordAdapter
from adapters.discord.chains import MemoryChains
from adapters.discord.normalize import (
    PRESS_TOKEN,
    PRESSED_MESSAGE,
    Press,
    choice_id,
    parse_choice,
)
from adapters.discord.sink import offer_text
from bot import messages
from bot.config import ActionsSettings, DiscordSettings, EmbeddingSettings, LogSettings, Settings
from bot.errors import PlatformError
from bot.ops.health import Degraded
from bot.reply import Choices, Offer
from bot.routing.embeddings import Embedder
from bot.runtime import open_embedder
from bot.store.inbox import MemoryInbox
from bot.tenants import load_tenants
from bot.tools.sample_service import DESK
from bot.turns import CHOICE, ConversationKey, Turn
from tests.conftest import engine_settings
from tests.discord.conftest import discord_settings, poll
from tests.discord.fake import FakeDiscord, Json
from tests.fakes.llm import FakeLLM
from tests.unit.test_actions_flow import BROKEN, TICKET, TOKEN, served, service, tenants_file  # noqa: F401
from tests.unit.test_dialogue_core import dialogue_core

CALL = "0123456789abcdef"
WEBHOOK_EDITS = r"/webhooks/\d+/itoken-\w+/messages/.+"


# -- the custom ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["confirm", "cancel"])
@pytest.mark.parametrize("thread", ["", "1234567890123456789"])
def test_a_buttons_custom_id_reads_back(choice: str, thread: str) -> None:
    custom_id = choice_id(choice, CALL, thread)
    assert custom_id.startswith("parley:choice:") and len(custom_id) <= 100  # Discord's limit
    assert parse_choice(custom_id) == Press(choice, CALL, thread)


@pytest.mark.parametrize(
    "custom_id",
    [
        "",
        "parley:choice:",
        "parley:choice:confirm",
        f"parley:choice:confirm:{CALL}",  # no thread part
        f"parley:choice:maybe:{CALL}:",
        f"parley:choice:confirm:{CALL.upper()}:",
        f"parley:choice:confirm:{CALL[:-1]}:",
        f"parley:choice:confirm:{CALL}0:",
        f"parley:choice:confirm:{CALL}:12a",
        f"parley:choice:confirm:{CALL}:{'1' * 21}",
        f"parley:choice:confirm:{CALL}:1:2",
        f"other:choice:confirm:{CALL}:",
        f" parley:choice:confirm:{CALL}:",
    ],
)
def test_a_custom_id_parley_did_not_make_is_not_read(custom_id: str) -> None:
    assert parse_choice(custom_id) is None


def test_the_call_in_words_is_escaped_and_bounded() -> None:
    text = offer_text("open a **ticket** for <@123456789012345678> and @everyone, `now`")
    assert "**" not in text.replace("\\*\\*", "") and "\\`now\\`" in text
    assert "<@123456789012345678>" not in text and "@everyone" not in text
    long = offer_text("x" * 5000, 1800)
    assert len(long) == 1800 and long.endswith("…")


# -- the adapter alone: offers, presses into an inbox, settles ---------------------------------


@dataclass
class Intake:
    fake: FakeDiscord
    adapter: DiscordAdapter
    inbox: MemoryInbox

    async def next_turn(self) -> Turn:
        async with asyncio.timeout(30):
            return (await self.inbox.get()).turn


@asynccontextmanager
async def taking(fake: FakeDiscord, settings: DiscordSettings, worker: Any = None) -> AsyncIterator[Intake]:
    """The Discord adapter connected to the fake, putting turns into a memory inbox; with `worker`
    (the dialogue manager's `serve`), the turns are answered too. Shut down as `run_adapters` does."""
    adapter = DiscordAdapter(settings=settings, chains=MemoryChains(), degraded=Degraded())
    inbox = MemoryInbox(maxsize=100)
    listening = asyncio.create_task(adapter.run(inbox))
    workers = asyncio.create_task(worker(inbox, {"discord": adapter})) if worker is not None else None
    try:
        await poll(lambda: listening.done() or (adapter.client is not None and adapter.client.is_ready()), timeout=60)
        if listening.done():
            listening.result()
        yield Intake(fake, adapter, inbox)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await inbox.close()
        if workers is not None:
            async with asyncio.timeout(60):
                await workers
        await adapter.aclose()


async def said(text: str) -> AsyncIterator[str]:
    yield text


def with_buttons(fake: FakeDiscord) -> list[Json]:
    """Parley's messages with Confirm / Cancel (answers have buttons of their own: 👍, 👎, …)."""
    return [m for m in fake.bot_messages() if any(b["custom_id"].startswith("parley:choice:") for b in fake.buttons(m))]


async def offered(intake: Intake, turn: Turn, what: str = 'open a support ticket titled "Broken"') -> Json:
    """The question answered to `turn` and its buttons offered, as the dialogue manager does it."""
    sink = intake.adapter.sink_for(turn)
    assert isinstance(sink, Choices)
    await sink.stream(said(messages.confirm_action(what, 10)))
    await sink.offer(Offer(call=CALL, what=what, expires=time.time() + 600))
    return with_buttons(intake.fake)[-1]


def callbacks_of(fake: FakeDiscord, interaction: Json) -> list[Json]:
    return [c.body for c in fake.interaction_responses() if f"/interactions/{interaction['id']}/" in c.path]


async def response_to(fake: FakeDiscord, interaction: Json) -> Json:
    """The one response to an interaction, once it has been made."""
    (response,) = await poll(lambda: callbacks_of(fake, interaction), timeout=30)
    return response


async def test_an_offer_shows_the_call_escaped_with_two_buttons_under_the_answer(fake: FakeDiscord, channel, alice):
    async with taking(fake, discord_settings(fake)) as intake:
        await fake.say(channel, alice, "my keyboard is broken", mention_bot=True)
        turn = await intake.next_turn()
        what = "open a **ticket** titled <@123456789012345678> @everyone"
        message = await offered(intake, turn, what)
        client = intake.adapter.client
        assert client is not None and not client.persistent_views, "no view is kept in memory"

    (question,) = [m for m in fake.bot_messages() if m is not message]
    assert message["content"] == offer_text(what) and "**" not in message["content"].replace("\\*", "")
    assert "@everyone" not in message["content"] and "<@123456789012345678>" not in message["content"]
    confirm, cancel = fake.buttons(message)
    assert (confirm["label"], confirm["style"], cancel["label"], cancel["style"]) == (
        messages.CONFIRM_BUTTON,
        3,  # success
        messages.CANCEL_BUTTON,
        4,  # danger
    )
    assert parse_choice(confirm["custom_id"]) == Press("confirm", CALL, turn.thread)
    assert parse_choice(cancel["custom_id"]) == Press("cancel", CALL, turn.thread)
    # Posted in the answer's channel, quoting the answer, pinging nobody.
    post = next(c for c in fake.calls_to("POST", r"/channels/\d+/messages") if c.body.get("components"))
    assert message["channel_id"] == channel["id"] and post.body["allowed_mentions"]["parse"] == []
    assert message["message_reference"]["message_id"] == question["id"]
    assert not post.body["allowed_mentions"].get("replied_user")


def _ask(fake: FakeDiscord, where: str, alice: Json) -> tuple[Json, dict[str, Any]]:
    """(the place to ask in, discord settings) for each kind of conversation."""
    if where == "dm":
        return fake.dm_channel(alice), {}
    channel = fake.add_guild("acme")["channels"][0]
    return channel, {"open_threads": where == "new thread"}


@pytest.mark.parametrize("where", ["channel", "new thread", "dm", "slash command"])
async def test_a_press_is_a_choice_turn_of_the_conversation_acknowledged_at_once(fake: FakeDiscord, where: str):
    alice, bob = fake.make_user("alice"), fake.make_user("bob")
    place, settings = _ask(fake, where, alice)
    async with taking(fake, discord_settings(fake, **settings)) as intake:
        if where == "slash command":
            await fake.slash(place, alice, "ask", question="open a ticket please")
        else:
            await fake.say(place, alice, "open a ticket please", mention_bot=place.get("guild_id") is not None)
        asked = await intake.next_turn()
        message = await offered(intake, asked)
        if where == "new thread":
            assert message["channel_id"] == asked.thread, "the buttons follow the answer into its thread"

        pressed = await fake.press(message, alice, messages.CONFIRM_BUTTON)
        turn = await intake.next_turn()
        assert turn.key == asked.key, "the press belongs to the conversation the buttons were offered in"
        assert (turn.command, turn.text, turn.reply_to, turn.user) == (CHOICE, "confirm", CALL, alice["id"])
        assert turn.event_id == pressed["id"]
        assert turn.handle[PRESSED_MESSAGE] == message["id"] and turn.handle[PRESS_TOKEN] == pressed["token"]
        assert callbacks_of(fake, pressed) == [{"type": 6}], "a deferred update: the buttons stay for now"
        assert len(fake.buttons(fake.messages[int(message["id"])])) == 2

        # Someone else's press is a turn of theirs: the dialogue manager tells them it is not theirs.
        if where != "dm":
            await fake.press(message, bob, messages.CANCEL_BUTTON)
            other = await intake.next_turn()
            assert (other.key, other.user, other.text) == (asked.key, bob["id"], "cancel")

        sink = intake.adapter.sink_for(turn)
        assert isinstance(sink, Choices)
        await sink.settle("confirmed")

    settled = fake.messages[int(message["id"])]
    assert settled["content"] == messages.action_settled("confirmed", f"<@{alice['id']}>")
    assert fake.buttons(settled) == [] and settled["components"] == []
    (edit,) = fake.calls_to("PATCH", WEBHOOK_EDITS)[-1:]
    assert edit.path.endswith("/@original") and edit.body["allowed_mentions"]["parse"] == []


async def test_a_press_parley_cannot_read_gets_a_note_and_no_turn(fake: FakeDiscord, channel, alice):
    dm = fake.dm_channel(alice)
    async with taking(fake, discord_settings(fake)) as intake:
        await fake.say(channel, alice, "hello", mention_bot=True)
        message = await offered(intake, await intake.next_turn())
        bad = [
            await fake.press(message, alice, custom_id=f"parley:choice:maybe:{CALL}:"),
            await fake.press(message, alice, custom_id="something:else"),
        ]
        await fake.say(dm, alice, "hello")
        dm_message = await offered(intake, await intake.next_turn())
        # In a DM the place names the conversation: a thread that is not the DM's is no button of Parley's.
        bad.append(await fake.press(dm_message, alice, custom_id=choice_id("confirm", CALL, channel["id"])))
        for interaction in bad:
            note = await response_to(fake, interaction)
            assert (note["type"], note["data"]["flags"], note["data"]["content"]) == (4, 64, messages.ACTION_EXPIRED)
        assert len(intake.inbox) == 0
    assert len(fake.buttons(fake.messages[int(message["id"])])) == 2, "the buttons stay"


async def test_a_press_where_parley_does_not_answer_is_refused_with_a_note(fake: FakeDiscord, alice):
    allowed, other = fake.add_guild("acme")["channels"]
    dm = fake.dm_channel(alice)
    settings = discord_settings(fake, allowed_channels=[int(allowed["id"])])  # DMs off with an allow-list
    async with taking(fake, settings) as intake:
        # Buttons left from before the allow-list changed, in a channel and a DM Parley no longer answers.
        outside = await fake.say(other, alice, "hi")
        in_dm = await fake.say(dm, alice, "hi")
        refused = [
            await fake.press(outside, alice, custom_id=choice_id("confirm", CALL, outside["id"])),
            await fake.press(in_dm, alice, custom_id=choice_id("confirm", CALL, dm["id"])),
        ]
        notes = [await response_to(fake, interaction) for interaction in refused]
        assert len(intake.inbox) == 0
    assert [(n["type"], n["data"]["flags"], n["data"]["content"]) for n in notes] == [
        (4, 64, messages.ACTION_UNAVAILABLE),
        (4, 64, messages.DISCORD_DMS_OFF),
    ]


async def test_offer_and_settle_survive_discord_errors_as_platform_errors(fake: FakeDiscord, channel, alice):
    async with taking(fake, discord_settings(fake)) as intake:
        await fake.say(channel, alice, "hello", mention_bot=True)
        turn = await intake.next_turn()
        sink = intake.adapter.sink_for(turn)
        assert isinstance(sink, Choices)
        await sink.stream(said("I'm about to open a ticket."))
        offer = Offer(call=CALL, what="open a ticket", expires=time.time() + 600)
        # A rate limit is waited out by discord.py's buckets; the buttons are posted once.
        fake.rate_limit("POST", rf"/channels/{channel['id']}/messages", retry_after=0.2)
        await sink.offer(offer)
        assert len(with_buttons(fake)) == 1
        # A refusal (the bot lost its permission) is Parley's PlatformError, which the core logs.
        fault = fake.refuse("POST", rf"/channels/{channel['id']}/messages")
        with pytest.raises(PlatformError) as refused:
            await sink.offer(offer)
        assert refused.value.permanent and refused.value.status == 403
        fake.lift(fault)

        (message,) = with_buttons(fake)
        await fake.press(message, alice, messages.CANCEL_BUTTON)
        press = await intake.next_turn()
        fake.server_error("PATCH", WEBHOOK_EDITS, status=404, times=1)
        sink = intake.adapter.sink_for(press)
        assert isinstance(sink, Choices)
        with pytest.raises(PlatformError):
            await sink.settle("cancelled")
        assert len(fake.buttons(fake.messages[int(message["id"])])) == 2, "the buttons stay; a later press settles"


# -- the whole way: a write action through the dialogue manager --------------------------------


@pytest_asyncio.fixture(scope="module")
async def embedder() -> AsyncIterator[Embedder]:
    """The default embedder, as `open_runtime` opens it (one per test module)."""
    settings = Settings(
        log=LogSettings(_env_file=None), embed=EmbeddingSettings(_env_file=None), engine=engine_settings()
    )
    opened = await open_embedder(settings)
    yield opened
    await opened.aclose()


async def test_a_write_action_is_confirmed_by_its_askers_button_and_runs_once(
    fake: FakeDiscord,
    make_settings,
    embedder: Embedder,
    tenants_file: Path,
    service: web.Application,
    channel: Json,
    alice: Json,
) -> None:
    bob = fake.make_user("bob")
    settings = make_settings(
        actions=ActionsSettings(_env_file=None, fetch_allow=["127.0.0.0/8"], secrets={"sample": TOKEN}),
        discord=discord_settings(fake),
    )
    llm = FakeLLM(["unused"], decisions=[TICKET])
    async with AsyncExitStack() as stack:
        core = await stack.enter_async_context(dialogue_core(settings, llm, embedder, load_tenants(tenants_file)))
        await stack.enter_async_context(taking(fake, settings.discord, core.manager.serve))
        question = await fake.say(channel, alice, BROKEN, mention_bot=True)
        (message,) = await poll(lambda: with_buttons(fake), timeout=60)
        (answer,) = fake.replies_to(question)
        assert answer["content"] == messages.confirm_action('open a support ticket titled "Broken keyboard"', 10)
        assert message["content"] == offer_text('open a support ticket titled "Broken keyboard"')
        assert service[DESK].tickets == {}, "nothing done before the yes"

        # Bob presses Alice's Confirm: told it is not his (to him alone), and the buttons stay.
        by_bob = await fake.press(message, bob, messages.CONFIRM_BUTTON)
        (note,) = await poll(lambda: followups_to(fake, by_bob), timeout=60)
        assert note["content"] == messages.ACTION_NOT_YOURS and note["flags"] & 64
        assert len(fake.buttons(fake.messages[int(message["id"])])) == 2 and service[DESK].tickets == {}

        # Alice presses it: the ticket is opened, once, and the buttons give way to who decided.
        confirm = fake.buttons(message)[0]["custom_id"]
        by_alice = await fake.press(message, alice, messages.CONFIRM_BUTTON)
        (done,) = await poll(lambda: followups_to(fake, by_alice), timeout=60)
        assert done["content"].startswith("Done: open_ticket.") and not done["flags"] & 64
        settled = fake.messages[int(message["id"])]
        await poll(lambda: settled["components"] == [], timeout=60)
        assert settled["content"] == messages.action_settled("confirmed", f"<@{alice['id']}>")
        assert len(service[DESK].tickets) == 1

        # A second press (a client that still shows the buttons): already done, nothing runs again.
        again = await fake.press(message, alice, custom_id=confirm)
        (already,) = await poll(lambda: followups_to(fake, again), timeout=60)
        assert already["content"] == messages.action_already("confirmed")
        assert len(service[DESK].tickets) == 1
        assert all(callbacks_of(fake, i) == [{"type": 6}] for i in (by_bob, by_alice, again))
        # The presses were turns of the question's conversation: its history holds their answers.
        key = ConversationKey("discord", channel["guild_id"], channel["id"], question["id"])
        said_there = [m.content for m in (await core.store.load(key)).messages]
        assert said_there[0] == BROKEN and said_there[-1] == messages.action_already("confirmed")
        assert any(text.startswith("Done: open_ticket.") for text in said_there)


def followups_to(fake: FakeDiscord, interaction: Json) -> list[Json]:
    """The messages posted as follow-ups of an interaction (answers to a press)."""
    return [
        m
        for m in fake.bot_messages()
        if m.get("interaction_metadata", {}).get("id") == interaction["id"] and m["id"] != interaction["message"]["id"]
    ]
