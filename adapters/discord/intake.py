"""Discord's intake: gateway messages (forum posts among them), slash and message commands and
👍/👎 reactions made turns for the inbox (button presses: `adapters.discord.presses`).

`Intake` decides what is for Parley and makes it a `Turn`; `Delivery` puts each turn into
the inbox. What is for Parley in a channel follows the mention rule of the profile in force
there, its own or its category's (`scopes`), which each turn names (`Turn.profile`).
Each slash command is deferred at once (Discord wants an answer within 3 seconds) and
answered later through the interaction's webhook.

When the inbox cannot take a turn because Redis is unreachable, the turn waits in a
bounded in-memory `RetryBuffer` that puts it again with backoff (Discord does not
deliver an event again); past the bound the user is told to try again.

DMs follow `DISCORD_ALLOW_DMS` (off by default when an allow-list is set): a refused DM
gets one line saying so, since a DM is addressed to Parley alone and silence would look
broken, while a message in a channel outside the allow-lists is ignored in silence
(a public reply there would be noise in a channel Parley was kept out of).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import discord

from adapters.discord.buffer import RetryBuffer
from adapters.discord.chains import Chains
from adapters.discord.guide import Guide
from adapters.discord.normalize import (
    PLATFORM,
    Place,
    chain_root_guess,
    channel_ids,
    forum_post,
    guild_id_of,
    interaction_turn,
    is_from_bot,
    mentions_bot,
    message_turn,
    place_of,
    replied_to,
    strip_mention,
    tenant_of,
)
from adapters.discord.scopes import PlaceProfiles
from bot import messages
from bot.config import DiscordSettings
from bot.errors import InboxClosed, InboxFull, InboxUnavailable
from bot.ops.logs import turn_fields
from bot.ops.stats import AnswerIndex
from bot.store.inbox import Inbox
from bot.turns import Turn

log = logging.getLogger(__name__)

VOTE_EMOJI = {"👍": "up", "👎": "down"}  # reactions that are feedback on an answer (any skin tone)
PRIVATE_COMMANDS = ("help", "reset")  # answered to the caller only
INTAKE_GRACE = 10.0  # seconds shutdown waits for the event handlers already running to put their turns

Tell = Callable[[Turn, str], Awaitable[None]]  # one line to the user of a turn, outside the dialogue


async def note(interaction: discord.Interaction, text: str) -> None:
    """A line to the one who pressed or called, as the interaction's response (ephemeral)."""
    try:
        await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not answer an interaction (%s %s)", exc.status, exc.code)


class Delivery:
    """Turns into the inbox, in arrival order. While Redis is unreachable they are held and
    put again; a user whose turn cannot be taken (the inbox full or closing, the buffer
    full, still unreachable at shutdown) is told to retry (BUSY)."""

    def __init__(self, *, tell: Tell, size: int) -> None:
        self._tell = tell
        self._held = RetryBuffer(self._deliver, give_up=self._give_up, size=size)
        self._inbox: Inbox | None = None

    @contextlib.asynccontextmanager
    async def running(self, inbox: Inbox) -> AsyncIterator[None]:
        """Held turns are retried for the life of the block, then tried once more."""
        self._inbox = inbox
        async with self._held.running():
            yield

    async def put(self, turn: Turn) -> None:
        if len(self._held):
            await self._hold(turn)  # behind the turns already waiting, so they stay in order
            return
        try:
            await self._deliver(turn)
        except InboxUnavailable:
            await self._hold(turn)

    async def put_vote(self, turn: Turn) -> None:
        """A vote is neither held nor answered: one the inbox refuses is dropped (and logged)."""
        assert self._inbox is not None
        try:
            await self._inbox.put(turn)
        except (InboxFull, InboxClosed, InboxUnavailable) as exc:
            log.warning("a vote was dropped (%s)", type(exc).__name__, extra=turn_fields(turn))

    async def _deliver(self, turn: Turn) -> None:
        """Into the inbox, or the user told why not; `InboxUnavailable` propagates (hold the turn)."""
        assert self._inbox is not None
        try:
            await self._inbox.put(turn)
        except InboxFull:
            log.warning("inbox full; told the user to retry", extra=turn_fields(turn))
            await self._tell(turn, messages.BUSY)
        except InboxClosed:
            log.warning("shutting down; message not taken, told the user to retry", extra=turn_fields(turn))
            await self._tell(turn, messages.BUSY)

    async def _give_up(self, turn: Turn) -> None:
        """A held turn the inbox still refused at shutdown."""
        log.warning("inbox unreachable at shutdown; told the user to retry", extra=turn_fields(turn))
        await self._tell(turn, messages.BUSY)

    async def _hold(self, turn: Turn) -> None:
        if not self._held.hold(turn):
            log.warning(
                "inbox unreachable and %s turns held already; told the user to retry",
                len(self._held),
                extra=turn_fields(turn),
            )
            await self._tell(turn, messages.BUSY)
        elif len(self._held) == 1:
            log.warning("inbox unreachable; holding turns in memory and retrying", extra=turn_fields(turn))


class Intake:
    """What the gateway hands Parley, as turns: which messages are for Parley (mentions, DMs,
    follow-ups in its reply chains and threads), slash commands and votes on its answers.
    Each event handler is tracked until its turn is put, so shutdown can wait for it."""

    def __init__(
        self,
        *,
        settings: DiscordSettings,
        chains: Chains,
        answers: AnswerIndex | None,
        delivery: Delivery,
        tell: Tell,
        places: PlaceProfiles,
        guide: Guide,
    ) -> None:
        self._settings = settings
        self._places = places  # the profile each place takes its settings from (its mention rule)
        self._guide = guide  # /help's text
        self._chains = chains
        self._answers = answers  # each answer message posted, for 👍/👎 reactions on it
        self._delivery = delivery
        self._tell = tell
        self._taking: set[asyncio.Task[Any]] = set()  # event handlers on their way to the inbox

    @contextlib.contextmanager
    def taking_in(self) -> Iterator[None]:
        """Marks the event handler running now as on its way to the inbox: shutdown waits for it."""
        task = asyncio.current_task()
        assert task is not None  # discord.py runs each event handler in a task of its own
        self._taking.add(task)
        try:
            yield
        finally:
            self._taking.discard(task)

    async def settle(self) -> None:
        """Once the gateway is closed: wait (a while) for the event handlers still putting their turns."""
        if self._taking:
            _, late = await asyncio.wait(set(self._taking), timeout=INTAKE_GRACE)
            if late:
                log.warning(
                    "%s Discord events still being taken after %.0f s; their users are told if they cannot be queued",
                    len(late),
                    INTAKE_GRACE,
                )

    # -- messages --------------------------------------------------------------------------

    async def on_message(self, message: discord.Message, *, me: discord.ClientUser | None) -> None:
        with self.taking_in():
            await self._take_message(message, me)

    async def _take_message(self, message: discord.Message, me: discord.ClientUser | None) -> None:
        if me is None or is_from_bot(message):
            return
        guild_id = guild_id_of(message)
        place = place_of(message.channel, guild_id)
        if not place.allowed(self._settings, guild_id=guild_id, channel_ids=channel_ids(message.channel)):
            if place.dm:
                await self._refuse_dm(message_turn(message, bot_id=me.id, conversation=None))
            return
        bot_id = me.id
        roles = self._bot_roles(message.guild)
        conversation = None
        post = forum_post(message)
        # "always": every message there is for Parley; "threads": each question gets a thread.
        rule = "mention" if place.dm else self._places.mention_rule(place.tenant, message.channel)
        if not place.dm and not post and not mentions_bot(message, bot_id=bot_id, bot_role_ids=roles):
            conversation = await self._continued(message, place, bot_id)
            if conversation is None and rule != "always":
                return
        threads = (
            self._settings.open_threads or rule == "threads" or message.channel.id in self._settings.thread_channels
        )
        turn = message_turn(
            message,
            bot_id=bot_id,
            bot_role_ids=roles,
            conversation=conversation,
            open_thread=threads,
            profile=self._places.key(place.tenant, message.channel),
        )
        if not turn.text.strip():
            if post:
                log.info("a new forum post with no text Parley can read: told its author", extra=turn_fields(turn))
                await self._tell(turn, messages.FORUM_POST_EMPTY)
                return
            if message.attachments or message.stickers:
                await self._tell(turn, messages.NO_TEXT)
                return
            if conversation is not None:
                return  # an unaddressed follow-up whose text Discord withheld (no content intent)
        if place.thread_id is not None and conversation is None:
            await self._chains.remember(place.thread_id, turn.thread)  # called into a thread: it is now ours
        await self._delivery.put(turn)

    async def _continued(self, message: discord.Message, place: Place, bot_id: int) -> str | None:
        """The conversation an unaddressed guild message continues, or None (not for Parley)."""
        if place.thread_id is not None:
            if getattr(message.channel, "owner_id", None) == bot_id:
                return place.thread_id
            return await self._chains.conversation_of(place.thread_id)
        parent = replied_to(message)
        if parent is None:
            return None
        return await self._chains.conversation_of(str(parent)) or chain_root_guess(message, bot_id=bot_id)

    @staticmethod
    def _bot_roles(guild: discord.Guild | None) -> frozenset[int]:
        if guild is None:
            return frozenset()
        role = guild.self_role  # the role Discord makes for a bot, which users can mention too
        return frozenset((role.id,)) if role is not None else frozenset()

    # -- slash commands --------------------------------------------------------------------

    async def on_command(
        self, interaction: discord.Interaction, command: str, text: str = "", *, target_language: str | None = None
    ) -> None:
        with self.taking_in():
            await self._take_command(interaction, command, text, target_language=target_language)

    async def _take_command(
        self, interaction: discord.Interaction, command: str, text: str, *, target_language: str | None
    ) -> None:
        place = place_of(interaction.channel, interaction.guild_id)
        allowed = place.allowed(
            self._settings, guild_id=interaction.guild_id, channel_ids=channel_ids(interaction.channel)
        )
        try:
            # Within Discord's 3 seconds, before anything else: "Parley is thinking…".
            response = await interaction.response.defer(
                thinking=True, ephemeral=command in PRIVATE_COMMANDS or not allowed
            )
            if not allowed and not place.dm:
                await interaction.delete_original_response()  # not answered here: leave no trace
                return
        except discord.HTTPException as exc:
            log.warning("could not acknowledge /%s (%s %s); Discord shows it as failed", command, exc.status, exc.code)
            return
        turn = interaction_turn(
            interaction,
            command=command,
            text=text,
            target_language=target_language,
            original_message_id=response.message_id if response is not None else None,
            profile=self._places.key(place.tenant, interaction.channel),
        )
        if not allowed:
            await self._refuse_dm(turn)
        elif command == "help":
            # Answered here: only the adapter knows what it registered and its settings allow.
            await self._tell(turn, self._guide.text(interaction, turn))
        else:
            await self._delivery.put(turn)

    async def on_message_command(
        self, interaction: discord.Interaction, command: str, message: discord.Message
    ) -> None:
        """ "Ask Parley" or "Translate" on a message: its text, as /ask or /translate would take it."""
        me = interaction.client.user
        text = strip_mention(message.content, bot_id=me.id) if me is not None else message.content.strip()
        if text:
            await self.on_command(interaction, command, text)
            return
        log.info("%s on message %s, which has no text Parley can read: told the caller", command, message.id)
        await note(interaction, messages.MESSAGE_HAS_NO_TEXT)

    async def _refuse_dm(self, turn: Turn) -> None:
        log.info("direct message refused: DMs are off (DISCORD_ALLOW_DMS)", extra=turn_fields(turn))
        await self._tell(turn, messages.DISCORD_DMS_OFF)

    # -- votes -----------------------------------------------------------------------------

    async def on_reaction(self, payload: discord.RawReactionActionEvent, *, me: discord.ClientUser | None) -> None:
        """A 👍/👎 on one of Parley's answers: a `feedback` turn of the answer's conversation."""
        with self.taking_in():
            await self._take_reaction(payload, me)

    async def _take_reaction(self, payload: discord.RawReactionActionEvent, me: discord.ClientUser | None) -> None:
        vote = VOTE_EMOJI.get((payload.emoji.name or "")[:1])
        if vote is None or me is None or payload.user_id == me.id:
            return
        if payload.message_author_id is not None and payload.message_author_id != me.id:
            return  # a reaction on someone else's message: none of Parley's business
        tenant = tenant_of(payload.guild_id)
        answered = await self._answers.find(PLATFORM, tenant, str(payload.message_id)) if self._answers else None
        if answered is None:
            log.info(
                "%s reaction on message %s, which is no answer Parley remembers: ignored", vote, payload.message_id
            )
            return
        turn = answered.vote(
            user=str(payload.user_id),
            vote=vote,
            # Reactions have no id of their own; a replayed gateway event carries the same fields.
            event_id=f"reaction:{payload.message_id}:{payload.user_id}:{vote}",
            address={"post_channel": str(payload.channel_id)},
        )
        await self._delivery.put_vote(turn)
