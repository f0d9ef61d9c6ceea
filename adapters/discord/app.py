"""The Discord transport: discord.py's sharded client, its gateway events and slash commands.

`DiscordAdapter.run` owns the client: it logs in and keeps the gateway shards of
this replica connected (discord.py resumes a session after a RECONNECT or a dropped
connection, and Discord replays what was missed). Registering the slash commands is
an optional step beside it: a refusal (403 Missing Access, a 5xx) is logged once with
the fix, reported in /readyz (`bot.ops.health.Degraded`) and tried again with backoff,
while mentions and DMs are answered. Each message for Parley becomes a `Turn` in the
inbox; each slash command is deferred at once (Discord wants an answer within 3
seconds) and answered later through the interaction's webhook.

On cancellation intake stops before `run` returns, and so before the inbox closes
(`bot.server`): the gateway closes, the event handlers already running put their turns,
the held turns get a last try, and a user whose turn could still not be queued is told
(BUSY). The REST client is kept until the answers handed out are finished, then closed.

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
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands

from adapters.discord.buffer import RetryBuffer
from adapters.discord.chains import Chains
from adapters.discord.normalize import (
    PLATFORM,
    Place,
    chain_root_guess,
    channel_ids,
    guild_id_of,
    interaction_turn,
    is_from_bot,
    mentions_bot,
    message_turn,
    place_of,
    replied_to,
    tenant_of,
)
from adapters.discord.sink import ChannelEditor, InteractionEditor
from bot import messages
from bot.config import DiscordSettings
from bot.errors import (
    ConfigError,
    InboxClosed,
    InboxFull,
    InboxUnavailable,
    ParleyError,
)
from bot.ops.health import Degraded
from bot.store.inbox import Inbox
from bot.ops.logs import turn_fields
from bot.ops.metrics import Metrics
from bot.reply import EditingSink, MessageEditor, ReplySink
from bot.ops.stats import AnswerIndex
from bot.turns import Turn

log = logging.getLogger(__name__)

# What Parley asks the gateway for, and nothing more: guilds (channels, threads,
# roles), messages in guilds and DMs, and their text (privileged: without it
# Discord still sends the text of mentions and DMs), and reactions (👍/👎 on answers).
INTENTS = discord.Intents(
    guilds=True, guild_messages=True, dm_messages=True, message_content=True, guild_reactions=True, dm_reactions=True
)
VOTES = {"👍": "up", "👎": "down"}  # reactions that are feedback on an answer (any skin tone)
# The bot permissions the code uses (see deploy/discord/SETUP.md): read channels and
# their history (a reply quotes a message), post, post in threads, and with
# open_threads create public threads.
PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, read_message_history=True
)
THREAD_PERMISSIONS = discord.Permissions(create_public_threads=True)
PRIVATE_COMMANDS = ("help", "reset")  # answered to the caller only
COMMANDS_STEP = "discord:commands"  # the slash-command registration, in /readyz
CONTENT_STEP = "discord:message_content"
INTAKE_GRACE = 10.0  # seconds shutdown waits for the event handlers already running to put their turns


def permissions(*, open_threads: bool) -> discord.Permissions:
    return PERMISSIONS | THREAD_PERMISSIONS if open_threads else PERMISSIONS


def invite_url(application_id: int, *, open_threads: bool) -> str:
    return discord.utils.oauth_url(
        application_id, permissions=permissions(open_threads=open_threads), scopes=("bot", "applications.commands")
    )


def point_at(settings: DiscordSettings) -> None:
    """Send REST and the gateway where the settings say (a rate-limit proxy, the tests'
    fake). discord.py has exactly two hooks for this, both class attributes read when a
    request or connection is made: the REST base of every `Route` (webhooks included)
    and the gateway a shard connects to when Discord has not named one."""
    discord.http.Route.BASE = settings.api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


def content_granted(flags: discord.ApplicationFlags) -> bool:
    return flags.gateway_message_content or flags.gateway_message_content_limited


class ParleyClient(discord.AutoShardedClient):
    """discord.py's sharded client with this replica's shards; events go to the adapter."""

    def __init__(
        self,
        *,
        adapter: DiscordAdapter,
        settings: DiscordSettings,
        intents: discord.Intents,
        http_trace: aiohttp.TraceConfig | None = None,
    ) -> None:
        super().__init__(
            intents=intents,
            shard_count=settings.shard_count,
            shard_ids=settings.shard_ids,
            guild_ready_timeout=settings.guild_ready_timeout,
            chunk_guilds_at_startup=False,
            max_messages=None,  # Parley reads each message once; no message cache
            allowed_mentions=discord.AllowedMentions.none(),
            http_trace=http_trace,  # sees every REST attempt: counts Discord's 429s and 5xx
        )
        self._adapter = adapter
        self.tree = app_commands.CommandTree(self)
        add_commands(self.tree, adapter)

    async def on_message(self, message: discord.Message) -> None:
        await self._adapter.on_message(message)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._adapter.on_reaction(payload)

    async def on_shard_ready(self, shard_id: int) -> None:
        log.info("discord shard %s ready (%s guilds)", shard_id, sum(1 for g in self.guilds if g.shard_id == shard_id))

    async def on_shard_resumed(self, shard_id: int) -> None:
        log.info("discord shard %s resumed its session", shard_id)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        # The error boundary around one gateway event: log it, keep the connection.
        log.exception("error while handling discord event %s", event_method)


def add_commands(tree: app_commands.CommandTree, adapter: DiscordAdapter) -> None:
    @tree.command(name="ask", description="Ask Parley a question")
    @app_commands.describe(question="What you want to know")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        await adapter.on_command(interaction, "ask", question)

    @tree.command(name="translate", description="Translate a text")
    @app_commands.describe(text="The text to translate", to="The language to translate into (default: English)")
    async def translate(interaction: discord.Interaction, text: str, to: str | None = None) -> None:
        await adapter.on_command(interaction, "translate", text, target_language=to)

    @tree.command(name="reset", description="Make Parley forget this conversation")
    async def reset(interaction: discord.Interaction) -> None:
        await adapter.on_command(interaction, "reset")

    @tree.command(name="help", description="What Parley can do")
    async def help_(interaction: discord.Interaction) -> None:
        await adapter.on_command(interaction, "help")


class DiscordAdapter:
    platform = "discord"

    def __init__(
        self, *, settings: DiscordSettings, chains: Chains, degraded: Degraded, metrics: Metrics | None = None,
        answers: AnswerIndex | None = None,
    ) -> None:
        self._settings = settings
        self._chains = chains
        self._degraded = degraded  # optional steps that failed (the command registration), for /readyz
        self._answers = answers  # each answer message posted, for 👍/👎 reactions on it
        self._trace = metrics.platform_trace(self.platform) if metrics is not None else None
        self._held = RetryBuffer(self._deliver, give_up=self._give_up, size=settings.retry_buffer)
        self._client: ParleyClient | None = None
        self._inbox: Inbox | None = None
        self._taking: set[asyncio.Task[Any]] = set()  # event handlers on their way to the inbox
        self.content_intent = True  # False once Discord has said the text of messages is withheld

    @property
    def client(self) -> ParleyClient | None:
        return self._client

    # -- the connection --------------------------------------------------------------------

    async def run(self, inbox: Inbox) -> None:
        # Held turns are retried until intake has stopped (`_connect` closes the gateway on the
        # way out), then tried once more; the users of those the inbox still refuses are told.
        async with self._held.running():
            await self._connect(inbox)

    async def _connect(self, inbox: Inbox) -> None:
        assert self._settings.token is not None
        self._inbox = inbox
        point_at(self._settings)
        intents = discord.Intents(INTENTS.value)
        try:
            while True:
                client = self._client = ParleyClient(
                    adapter=self, settings=self._settings, intents=intents, http_trace=self._trace
                )
                try:
                    await client.login(self._settings.token.get_secret_value())
                    if not intents.message_content or content_granted(client.application_flags):
                        async with self._registering_commands(client):
                            await client.connect(reconnect=True)
                        return
                except discord.PrivilegedIntentsRequired:
                    if not intents.message_content:
                        raise ConfigError("DISCORD_TOKEN", "Discord refused the gateway intents Parley needs") from None
                except discord.LoginFailure:
                    raise ConfigError("DISCORD_TOKEN", "Discord rejected the bot token") from None
                # Discord withholds message text from this application: connect again without asking for it.
                self._no_content_intent()
                intents.message_content = False
                await client.close()
        finally:
            await self._shutdown()

    def _no_content_intent(self) -> None:
        self.content_intent = False
        log.warning(
            "Discord has not granted Parley the Message Content intent: it will answer mentions, DMs and "
            "slash commands, but cannot read follow-ups in reply chains and threads that do not mention it. "
            "Enable 'Message Content Intent' under Bot in the Discord developer portal, then restart."
        )
        self._degraded.report(
            CONTENT_STEP, "Message Content intent not granted: follow-ups without a mention are not read "
            "(enable it under Bot in the Discord developer portal, then restart)"
        )

    def _registering_commands(self, client: ParleyClient) -> contextlib.AbstractAsyncContextManager[None]:
        """The slash-command registration, in the background for as long as the gateway runs."""
        if not self._settings.sync_commands:
            return contextlib.nullcontext()
        return self._degraded.optional(
            COMMANDS_STEP, lambda: self._sync_commands(client), explain=self._sync_problem,
            first_delay=self._settings.sync_retry,
        )

    async def _sync_commands(self, client: ParleyClient) -> None:
        guild = discord.Object(self._settings.test_guild) if self._settings.test_guild else None
        if guild is not None:
            client.tree.copy_global_to(guild=guild)
        synced = await client.tree.sync(guild=guild)
        log.info("registered %s slash commands (guild: %s)", len(synced), guild.id if guild else "all")

    def _sync_problem(self, exc: Exception) -> str:
        guild = self._settings.test_guild
        if isinstance(exc, discord.Forbidden):
            where = f"to server {guild} (DISCORD_TEST_GUILD)" if guild else "again"
            return (
                f"Discord refused to register the slash commands ({exc.status} {exc.text or 'Missing Access'}): "
                f"invite the bot {where} with the applications.commands scope (the invite link in "
                "deploy/discord/SETUP.md); mentions and DMs are answered meanwhile"
            )
        if isinstance(exc, discord.HTTPException):
            return f"Discord answered the slash-command registration with {exc.status} ({exc.text[:200]})"
        return f"could not reach Discord to register the slash commands ({type(exc).__name__}: {exc})"

    async def _shutdown(self) -> None:
        """Stop intake: the gateway closes, then the event handlers already running put their
        turns (the inbox stays open until `run` returns). REST stays up for the answers in
        flight until `aclose()`, which `run_adapters` calls once they are done."""
        if self._client is not None:
            for shard in self._client.shards.values():
                await shard.disconnect()
        if self._taking:
            _, late = await asyncio.wait(set(self._taking), timeout=INTAKE_GRACE)
            if late:
                log.warning("%s Discord events still being taken after %.0f s; their users are told if they "
                            "cannot be queued", len(late), INTAKE_GRACE)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    # -- the way back ----------------------------------------------------------------------

    def sink_for(self, turn: Turn) -> ReplySink:
        if "interaction_token" in turn.meta:
            editor: MessageEditor = InteractionEditor(self._client, turn, self._chains, answers=self._answers)
        else:
            editor = ChannelEditor(
                self._client, turn, self._chains, archive_minutes=self._settings.thread_archive_minutes,
                answers=self._answers,
            )
        return EditingSink(editor, limit=self._settings.message_limit, interval=self._settings.edit_interval)

    # -- intake ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _taking_in(self) -> Iterator[None]:
        """Marks the event handler running now as on its way to the inbox: shutdown waits for it."""
        task = asyncio.current_task()
        assert task is not None  # discord.py runs each event handler in a task of its own
        self._taking.add(task)
        try:
            yield
        finally:
            self._taking.discard(task)

    async def on_message(self, message: discord.Message) -> None:
        with self._taking_in():
            await self._take_message(message)

    async def _take_message(self, message: discord.Message) -> None:
        client = self._client
        if client is None or client.user is None or is_from_bot(message):
            return
        guild_id = guild_id_of(message)
        place = place_of(message.channel, guild_id)
        if not place.allowed(self._settings, guild_id=guild_id, channel_ids=channel_ids(message.channel)):
            if place.dm:
                await self._refuse_dm(message_turn(message, bot_id=client.user.id, conversation=None))
            return
        bot_id = client.user.id
        roles = self._bot_roles(message.guild)
        conversation = None
        if not place.dm and not mentions_bot(message, bot_id=bot_id, bot_role_ids=roles):
            conversation = await self._continued(message, place, bot_id)
            if conversation is None:
                return
        turn = message_turn(
            message, bot_id=bot_id, bot_role_ids=roles, conversation=conversation,
            open_thread=self._settings.open_threads,
        )
        if not turn.text.strip():
            if message.attachments or message.stickers:
                await self._tell(turn, messages.NO_TEXT)
                return
            if conversation is not None:
                return  # an unaddressed follow-up whose text Discord withheld (no content intent)
        if place.thread_id is not None and conversation is None:
            await self._chains.remember(place.thread_id, turn.thread)  # called into a thread: it is now ours
        await self._put(turn)

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

    async def on_command(
        self, interaction: discord.Interaction, command: str, text: str = "", *, target_language: str | None = None
    ) -> None:
        with self._taking_in():
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
        )
        if not allowed:
            await self._refuse_dm(turn)
        elif command == "help":
            # Answered here: only the adapter knows what its settings allow (DMs).
            await self._tell(turn, messages.discord_help(dms=self._settings.dms_allowed))
        else:
            await self._put(turn)

    async def _refuse_dm(self, turn: Turn) -> None:
        log.info("direct message refused: DMs are off (DISCORD_ALLOW_DMS)", extra=turn_fields(turn))
        await self._tell(turn, messages.DISCORD_DMS_OFF)

    async def _put(self, turn: Turn) -> None:
        if len(self._held):
            await self._hold(turn)  # behind the turns already waiting, so they stay in order
            return
        try:
            await self._deliver(turn)
        except InboxUnavailable:
            await self._hold(turn)

    async def on_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        """A 👍/👎 on one of Parley's answers: a `feedback` turn of the answer's conversation."""
        with self._taking_in():
            await self._take_reaction(payload)

    async def _take_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        client = self._client
        vote = VOTES.get((payload.emoji.name or "")[:1])
        if vote is None or client is None or client.user is None or payload.user_id == client.user.id:
            return
        if payload.message_author_id is not None and payload.message_author_id != client.user.id:
            return  # a reaction on someone else's message: none of Parley's business
        tenant = tenant_of(payload.guild_id)
        answered = await self._answers.find(PLATFORM, tenant, str(payload.message_id)) if self._answers else None
        if answered is None:
            log.info("%s reaction on message %s, which is no answer Parley remembers: ignored", vote, payload.message_id)
            return
        turn = answered.vote(
            user=str(payload.user_id), vote=vote,
            # Reactions have no id of their own; a replayed gateway event carries the same fields.
            event_id=f"reaction:{payload.message_id}:{payload.user_id}:{vote}",
            meta={"post_channel": str(payload.channel_id)},
        )
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
            log.warning("inbox unreachable and %s turns held already; told the user to retry", len(self._held),
                        extra=turn_fields(turn))
            await self._tell(turn, messages.BUSY)
        elif len(self._held) == 1:
            log.warning("inbox unreachable; holding turns in memory and retrying", extra=turn_fields(turn))

    async def _tell(self, turn: Turn, text: str) -> None:
        plain = dataclasses.replace(turn, meta={k: v for k, v in turn.meta.items() if k != "open_thread"})
        try:
            await self.sink_for(plain).send(text)
        except ParleyError as exc:
            log.warning("could not tell the user: %s", exc, extra=turn_fields(turn))
