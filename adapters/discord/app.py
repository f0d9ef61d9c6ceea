"""The Discord transport: discord.py's sharded client, its connection and slash commands.

`DiscordAdapter.run` owns the client: it logs in and keeps the gateway shards of
this replica connected (discord.py resumes a session after a RECONNECT or a dropped
connection, and Discord replays what was missed). Registering the slash commands is
an optional step beside it: a refusal (403 Missing Access, a 5xx) is logged once with
the fix, reported in /readyz (`bot.ops.health.Degraded`) and tried again with backoff,
while mentions and DMs are answered. The client hands its events to
`adapters.discord.intake`, which makes them turns for the inbox.

On cancellation intake stops before `run` returns, and so before the inbox closes
(`bot.server`): the gateway closes, the event handlers already running put their turns,
the held turns get a last try, and a user whose turn could still not be queued is told
(BUSY). The REST client is kept until the answers handed out are finished, then closed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands

from adapters.discord.admin import Admin, config_group
from adapters.discord.chains import Chains
from adapters.discord.components import AnswerButton, is_answer_button, shows_button
from adapters.discord.guide import Guide
from adapters.discord.intake import Delivery, Intake
from adapters.discord.normalize import PRESS_TOKEN, custom_id_of
from adapters.discord.presses import Presses
from adapters.discord.scopes import PlaceProfiles
from adapters.discord.sink import ChannelEditor, ChoiceEditor, DiscordSink, InteractionEditor, PressEditor
from bot.config import DiscordSettings
from bot.errors import ConfigError, ParleyError
from bot.ops.health import Degraded
from bot.ops.logs import turn_fields
from bot.ops.metrics import Metrics
from bot.ops.stats import AnswerIndex
from bot.profiles import Profiles
from bot.reply import NO_JOURNAL, ReplyJournal, ReplySink
from bot.store.inbox import Inbox
from bot.turns import Turn

log = logging.getLogger(__name__)

# What Parley asks the gateway for, and nothing more: guilds (channels, threads,
# roles), messages in guilds and DMs, and their text (privileged: without it
# Discord still sends the text of mentions and DMs), and reactions (👍/👎 on answers).
INTENTS = discord.Intents(
    guilds=True, guild_messages=True, dm_messages=True, message_content=True, guild_reactions=True, dm_reactions=True
)
# The bot permissions the code uses (see deploy/discord/SETUP.md): read channels and
# their history (a reply quotes a message), post, post in threads (forum posts too), and
# where Parley opens threads (open_threads, thread_channels) create public threads. Buttons
# and message commands need no permission.
PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, read_message_history=True
)
THREAD_PERMISSIONS = discord.Permissions(create_public_threads=True)
COMMANDS_STEP = "discord:commands"  # the slash-command registration, in /readyz
CONTENT_STEP = "discord:message_content"


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
    """discord.py's sharded client with this replica's shards; events go to the intake."""

    def __init__(
        self,
        *,
        intake: Intake,
        presses: Presses,
        settings: DiscordSettings,
        intents: discord.Intents,
        admin: Admin | None = None,
        http_trace: aiohttp.TraceConfig | None = None,
    ) -> None:
        super().__init__(
            intents=intents,
            shard_count=settings.shard_count,
            # discord.py's types leave out None, which is its own default for these two (all shards, no trace).
            shard_ids=settings.shard_ids,  # type: ignore[arg-type]
            guild_ready_timeout=settings.guild_ready_timeout,
            chunk_guilds_at_startup=False,
            max_messages=None,  # Parley reads each message once; no message cache
            allowed_mentions=discord.AllowedMentions.none(),
            http_trace=http_trace,  # type: ignore[arg-type]  # sees every REST attempt: counts 429s and 5xx
        )
        self._intake = intake
        self._presses = presses
        self.tree = app_commands.CommandTree(self)
        add_commands(self.tree, intake, user_install=settings.user_install, admin=admin)
        self.add_dynamic_items(AnswerButton)  # the buttons under answers, read back from their custom ids

    @property
    def presses(self) -> Presses:
        return self._presses

    async def on_message(self, message: discord.Message) -> None:
        await self._intake.on_message(message, me=self.user)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # Slash commands go through the command tree. Discord sends a component's press only to
        # the application that posted it, so every press is of a button of Parley's: it is read
        # by its custom id (never by a view kept in memory), on any replica, after a restart.
        # The buttons under answers are discord.py's to dispatch (`AnswerButton`), unless the
        # pressed message no longer shows the button: discord.py would drop that press in silence.
        if interaction.type is discord.InteractionType.component:
            custom_id = custom_id_of(interaction)
            if not is_answer_button(custom_id):
                await self._presses.on_press(interaction)
            elif not shows_button(interaction.message, custom_id):
                await self._presses.on_stale_press(interaction)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._intake.on_reaction(payload, me=self.user)

    async def on_shard_ready(self, shard_id: int) -> None:
        log.info("discord shard %s ready (%s guilds)", shard_id, sum(1 for g in self.guilds if g.shard_id == shard_id))

    async def on_shard_resumed(self, shard_id: int) -> None:
        log.info("discord shard %s resumed its session", shard_id)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        # The error boundary around one gateway event: log it, keep the connection.
        log.exception("error while handling discord event %s", event_method)


# With `user_install`, the commands may also be used where a user (not a server) installed
# Parley: in any server, their DMs with others and group DMs (the answers go through the
# interaction, which needs no bot in the channel).
USER_INSTALLS = app_commands.AppInstallationType(guild=True, user=True)
USER_CONTEXTS = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)


def add_commands(
    tree: app_commands.CommandTree, intake: Intake, *, user_install: bool = False, admin: Admin | None = None
) -> None:
    @tree.command(name="ask", description="Ask Parley a question")
    @app_commands.describe(question="What you want to know")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        await intake.on_command(interaction, "ask", question)

    @tree.command(name="translate", description="Translate a text")
    @app_commands.describe(text="The text to translate", to="The language to translate into (default: English)")
    async def translate(interaction: discord.Interaction, text: str, to: str | None = None) -> None:
        await intake.on_command(interaction, "translate", text, target_language=to)

    @tree.command(name="reset", description="Make Parley forget this conversation")
    async def reset(interaction: discord.Interaction) -> None:
        await intake.on_command(interaction, "reset")

    @tree.command(name="help", description="What Parley can do")
    async def help_(interaction: discord.Interaction) -> None:
        await intake.on_command(interaction, "help")

    # Message commands (right-click a message, Apps): its text asked, or translated into English.
    @tree.context_menu(name="Ask Parley")
    async def ask_message(interaction: discord.Interaction, message: discord.Message) -> None:
        await intake.on_message_command(interaction, "ask", message)

    @tree.context_menu(name="Translate")
    async def translate_message(interaction: discord.Interaction, message: discord.Message) -> None:
        await intake.on_message_command(interaction, "translate", message)

    if user_install:
        for command in tree.get_commands():
            command.allowed_installs, command.allowed_contexts = USER_INSTALLS, USER_CONTEXTS
    # /config: a server's own setting, so for its admins (Manage Server) and in servers only, however installed.
    if admin is not None:
        tree.add_command(config_group(admin))


class DiscordAdapter:
    """This replica's Discord connection (login, gateway shards, slash-command registration)
    and the way back to users (`sink_for`); what the gateway delivers goes to `Intake`."""

    platform = "discord"

    def __init__(
        self,
        *,
        settings: DiscordSettings,
        chains: Chains,
        degraded: Degraded,
        metrics: Metrics | None = None,
        answers: AnswerIndex | None = None,
        person: Callable[[Turn], bool] = lambda turn: False,
        profiles: Profiles | None = None,
        refresh: float = 2.0,
    ) -> None:
        self._settings = settings
        self._chains = chains
        self._person = person  # a desk takes the turn's requests for a person: "Talk to a person" under answers
        self._degraded = degraded  # optional steps that failed (the command registration), for /readyz
        self._answers = answers  # each answer message posted, for 👍/👎 reactions on it
        self._trace = metrics.platform_trace(self.platform) if metrics is not None else None
        self._delivery = Delivery(tell=self._tell, size=settings.retry_buffer)
        # The profile each place takes its settings from (its own, its channel's, its category's);
        # without profiles, none (mentions as always).
        places = PlaceProfiles(profiles)
        self._intake = Intake(
            settings=settings,
            chains=chains,
            answers=answers,
            delivery=self._delivery,
            tell=self._tell,
            places=places,
            guide=Guide(settings=settings, places=places, person=person),
        )
        # /config, for server admins: only where there are run-time profiles to change.
        self._admin = Admin(settings=settings, profiles=profiles, refresh=refresh) if profiles is not None else None
        self._presses = Presses(
            settings=settings, chains=chains, delivery=self._delivery, tracked=self._intake.taking_in, places=places
        )
        self._client: ParleyClient | None = None
        self.content_intent = True  # False once Discord has said the text of messages is withheld

    @property
    def client(self) -> ParleyClient | None:
        return self._client

    # -- the connection --------------------------------------------------------------------

    async def run(self, inbox: Inbox) -> None:
        # Held turns are retried until intake has stopped (`_connect` closes the gateway on the
        # way out), then tried once more; the users of those the inbox still refuses are told.
        async with self._delivery.running(inbox):
            await self._connect()

    async def _connect(self) -> None:
        assert self._settings.token is not None
        point_at(self._settings)
        intents = discord.Intents(INTENTS.value)
        try:
            while True:
                client = self._client = ParleyClient(
                    intake=self._intake,
                    presses=self._presses,
                    settings=self._settings,
                    intents=intents,
                    admin=self._admin,
                    http_trace=self._trace,
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
            CONTENT_STEP,
            "Message Content intent not granted: follow-ups without a mention are not read "
            "(enable it under Bot in the Discord developer portal, then restart)",
        )

    def _registering_commands(self, client: ParleyClient) -> contextlib.AbstractAsyncContextManager[None]:
        """The slash-command registration, in the background for as long as the gateway runs."""
        if not self._settings.sync_commands:
            return contextlib.nullcontext()
        return self._degraded.optional(
            COMMANDS_STEP,
            lambda: self._sync_commands(client),
            explain=self._sync_problem,
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
        await self._intake.settle()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    # -- the way back ----------------------------------------------------------------------

    def sink_for(self, turn: Turn, journal: ReplyJournal = NO_JOURNAL) -> ReplySink:
        if PRESS_TOKEN in turn.handle:  # a Confirm or Cancel pressed: answered through the press
            editor: ChoiceEditor = PressEditor(self._client, turn, self._chains, answers=self._answers)
        elif "interaction_token" in turn.handle:
            editor = InteractionEditor(self._client, turn, self._chains, answers=self._answers)
        else:
            editor = ChannelEditor(
                self._client,
                turn,
                self._chains,
                archive_minutes=self._settings.thread_archive_minutes,
                answers=self._answers,
            )
        return DiscordSink(
            editor,
            turn,
            limit=self._settings.message_limit,
            interval=self._settings.edit_interval,
            journal=journal,
            chains=self._chains,
            person=self._person(turn),
        )

    async def _tell(self, turn: Turn, text: str) -> None:
        """One line to the user, outside the dialogue (a refusal, BUSY); never opens a thread."""
        plain = dataclasses.replace(turn, handle={k: v for k, v in turn.handle.items() if k != "open_thread"})
        try:
            await self.sink_for(plain).send(text)
        except ParleyError as exc:
            log.warning("could not tell the user: %s", exc, extra=turn_fields(turn))
