"""`/config`: a server admin shows or changes the current channel's profile while Parley runs
(`bot.profiles`: validated as the tenants file is, audited, in force on every replica within
`PARLEY_TENANTS_REFRESH` seconds).

Who may: members with Manage Server. The command is registered with that as its default
permission and as guild-only, so Discord hides it from everyone else; but a server's admins can
grant any command to anyone (Server Settings, Integrations), and a client's view is no check, so
the permission is checked again here, on the member's permissions Discord sends with every
interaction.

Which profile: the tenant is the guild (`tenant_of`), the channel the one the command was run in
or, in a thread, its parent, as a turn there names it (`place_of`): the profile applies to every
conversation of the channel. With `scope: category`, the profile is that channel's category's,
which every channel in it without a profile of its own takes (`scopes`); `show` says which
profile is in force, and a `set` that gives a channel its own (so that its category's no longer
applies there) says so. Every answer is ephemeral: only the admin sees it, and a change waits
on Redis, so it is deferred first (Discord wants an answer within 3 seconds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import discord
from discord import app_commands

from adapters.discord.intake import note
from adapters.discord.normalize import category_of, channel_ids, place_of
from bot import messages
from bot.config import DiscordSettings
from bot.errors import StoreUnavailable, TenantConfigError
from bot.profiles import Change, Profiles, format_value, parse_value
from bot.tenants import FIELD_NAMES

log = logging.getLogger(__name__)

ADMIN = discord.Permissions(manage_guild=True)  # Manage Server (0x20): who may use /config
# Every field is a choice, which Discord checks before Parley sees the command. Discord allows 25
# choices per option (there are 23 fields; tests/discord/test_config.py keeps the count in view).
FIELD_CHOICES = [app_commands.Choice(name=name, value=name) for name in FIELD_NAMES]
SCOPES = ("channel", "category")  # whose profile: the channel's own, or its category's
SCOPE_CHOICES = [app_commands.Choice(name=name, value=name) for name in SCOPES]
SCOPE_HELP = "This channel's own settings (default), or its category's: for its channels without their own"
CONTENT_LIMIT = 2000  # characters of a Discord message
VALUE_LIMIT = 150  # characters of one value that `/config show` shows (a system prompt may be long)


def shown(value: Any, limit: int = VALUE_LIMIT) -> str:
    """A value as an admin would type it, shortened, and escaped: it may be anyone's text.
    None is "not set": the setting behind it applies (PARLEY_CONTEXT_SYSTEM_PROMPT, a quota's...)."""
    if value is None:
        return "not set"
    text = format_value(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return escaped(text)


def escaped(text: str) -> str:
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def fitted(text: str) -> str:
    """Within one Discord message, cut at a line's end (or anywhere, in one long line)."""
    if len(text) <= CONTENT_LIMIT:
        return text
    end = text.rfind("\n", 0, CONTENT_LIMIT - 2)
    return text[:end] + "\n…" if end > 0 else text[: CONTENT_LIMIT - 1] + "…"


@dataclass(frozen=True, slots=True)
class Target:
    """The profile a /config command is about: `key` is the channel's id (a thread's parent's) or,
    with the category scope, its category's; `category` the channel's category (None: in none)."""

    tenant: str
    channel: str
    category: str | None
    scope: str
    thread: bool

    @property
    def key(self) -> str:
        return self.category if self.scope == "category" and self.category else self.channel

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys the channel's settings may come from, most specific first."""
        return (self.channel, self.category) if self.category else (self.channel,)

    def inherits(self, key: str) -> bool:
        """Whether `key`, the profile in force in the channel, is its category's."""
        return self.category is not None and key == self.category


class Admin:
    """What `/config show|set|clear` does, once Discord has routed it here (`config_group`)."""

    def __init__(self, *, settings: DiscordSettings, profiles: Profiles, refresh: float) -> None:
        self._settings = settings
        self._profiles = profiles
        self._refresh = refresh  # PARLEY_TENANTS_REFRESH: how soon the other replicas follow

    async def show(self, interaction: discord.Interaction, scope: str = "channel") -> None:
        target = await self._target(interaction, "show", scope)
        if target is None:
            return
        # The profile in force: for a channel, its own or else its category's; none, the server's settings.
        keys = (target.key,) if target.scope == "category" else target.keys
        in_force = self._profiles.first_profile(target.tenant, keys)
        source = self._source(target, in_force)
        rows = self._profiles.show(target.tenant, in_force or target.key)
        lines = [f"`{name}`: {shown(value)} ({source_})" for name, value, source_ in rows]
        log.info("/config show (%s) in %s/%s by %s", target.scope, target.tenant, target.key, interaction.user.id)
        text = messages.discord_config_shown(lines, scope=target.scope, thread=target.thread, source=source)
        await note(interaction, fitted(text))

    async def set(self, interaction: discord.Interaction, field: str, value: str, scope: str = "channel") -> None:
        target = await self._target(interaction, "set", scope)
        if target is None or not await self._deferred(interaction):
            return
        # A channel that took its category's settings until now takes none of them once it has its own.
        before = self._profiles.first_profile(target.tenant, target.keys)
        try:
            change = await self._profiles.set(target.tenant, target.key, field, parse_value(value), by=by(interaction))
        except TenantConfigError as exc:  # logged by `Profiles`; the profile in force stays
            text = messages.discord_config_refused(f"`{exc.field}`: {escaped(exc.reason)}")
        except StoreUnavailable as exc:
            log.warning("/config set %s in %s/%s: %s; told the admin", field, target.tenant, target.key, exc)
            text = messages.DISCORD_CONFIG_STORE_DOWN
        else:
            if change is None:
                text = messages.discord_config_unchanged(
                    field, shown(parse_value(value)), scope=target.scope, thread=target.thread
                )
            else:
                text = messages.discord_config_set(
                    field,
                    shown(change.new),
                    seconds=self._refresh,
                    scope=target.scope,
                    thread=target.thread,
                    shadows=target.scope == "channel" and target.inherits(before),
                )
        await answer(interaction, fitted(text))

    async def clear(self, interaction: discord.Interaction, field: str | None, scope: str = "channel") -> None:
        target = await self._target(interaction, "clear", scope)
        if target is None or not await self._deferred(interaction):
            return
        try:
            changes: list[Change] = await self._profiles.clear(target.tenant, target.key, field, by=by(interaction))
        except StoreUnavailable as exc:
            log.warning("/config clear in %s/%s: %s; told the admin", target.tenant, target.key, exc)
            text = messages.DISCORD_CONFIG_STORE_DOWN
        else:
            if changes:
                now = self._profiles.first_profile(target.tenant, target.keys)
                text = messages.discord_config_cleared(
                    [c.field for c in changes],
                    seconds=self._refresh,
                    scope=target.scope,
                    thread=target.thread,
                    category=target.scope == "channel" and target.inherits(now),
                )
            else:
                log.info("/config clear %s in %s/%s: nothing to clear", field or "(all)", target.tenant, target.key)
                text = messages.discord_config_nothing_to_clear(target.scope, thread=target.thread)
        await answer(interaction, fitted(text))

    @staticmethod
    def _source(target: Target, key: str) -> str:
        """Which profile `key` is, in `messages.discord_config_shown`'s words: channel, category or none."""
        if not key:
            return ""
        return "category" if target.inherits(key) else "channel"

    async def _target(self, interaction: discord.Interaction, action: str, scope: str) -> Target | None:
        """The profile this is about, or None when the caller was told why there is none: outside a
        server, without Manage Server, where Parley does not answer (the allow-lists), or the
        category of a channel in none."""
        user = interaction.user.id
        if interaction.guild_id is None:
            log.info("/config %s by %s outside a server: refused", action, user)
            await note(interaction, messages.DISCORD_CONFIG_SERVERS_ONLY)
            return None
        granted = interaction.permissions
        if not (granted.manage_guild or granted.administrator):
            log.warning(
                "/config %s by %s in guild %s, who lacks Manage Server: refused", action, user, interaction.guild_id
            )
            await note(interaction, messages.DISCORD_CONFIG_ADMINS_ONLY)
            return None
        place = place_of(interaction.channel, interaction.guild_id)
        if not place.allowed(
            self._settings, guild_id=interaction.guild_id, channel_ids=channel_ids(interaction.channel)
        ):
            log.info(
                "/config %s by %s in %s/%s, where Parley does not answer: refused",
                action,
                user,
                place.tenant,
                place.channel,
            )
            await note(interaction, messages.DISCORD_CONFIG_NOT_HERE)
            return None
        category = category_of(interaction.channel)
        if scope == "category" and category is None:
            log.info("/config %s by %s for the category of %s/%s, in none", action, user, place.tenant, place.channel)
            await note(interaction, messages.DISCORD_CONFIG_NO_CATEGORY)
            return None
        return Target(place.tenant, place.channel, category, scope, thread=place.thread_id is not None)

    @staticmethod
    async def _deferred(interaction: discord.Interaction) -> bool:
        """Acknowledged within Discord's 3 seconds: a change waits on Redis, which may take longer."""
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
        except discord.HTTPException as exc:
            log.warning("could not acknowledge /config (%s %s); Discord shows it as failed", exc.status, exc.code)
            return False
        return True


def by(interaction: discord.Interaction) -> str:
    """Who changed a profile, for the audit."""
    return f"discord:{interaction.user.id}"


async def answer(interaction: discord.Interaction, text: str) -> None:
    """The deferred answer's text (it stays ephemeral, as deferred)."""
    try:
        await interaction.edit_original_response(content=text)
    except discord.HTTPException as exc:
        log.warning("could not answer /config (%s %s)", exc.status, exc.code)


def config_group(admin: Admin) -> app_commands.Group:
    """`/config show|set|clear`: registered for members with Manage Server, in servers only."""
    group = app_commands.Group(
        name="config",
        description="Show or change Parley's settings for this channel (Manage Server)",
        default_permissions=ADMIN,
        # Guild-only: `dm_permission` false, and `contexts` that say so too (Discord reads those now),
        # for a server's installation of Parley only (never a user's, `DISCORD_USER_INSTALL`).
        guild_only=True,
        allowed_contexts=app_commands.AppCommandContext(guild=True),
        allowed_installs=app_commands.AppInstallationType(guild=True),
    )

    @group.command(name="show", description="The settings in force in this channel, and where each comes from")
    @app_commands.describe(scope=SCOPE_HELP)
    @app_commands.choices(scope=SCOPE_CHOICES)
    async def show(interaction: discord.Interaction, scope: str = "channel") -> None:
        await admin.show(interaction, scope)

    @group.command(name="set", description="Change one setting of this channel or its category")
    @app_commands.describe(
        field="The setting", value='Its new value: text, or TOML: ["chat", "qa"], true, 5', scope=SCOPE_HELP
    )
    @app_commands.choices(field=FIELD_CHOICES, scope=SCOPE_CHOICES)
    async def set_(interaction: discord.Interaction, field: str, value: str, scope: str = "channel") -> None:
        await admin.set(interaction, field, value, scope)

    @group.command(name="clear", description="Undo /config changes here: the tenants file's settings apply again")
    @app_commands.describe(field="The setting (default: every one changed with /config here)", scope=SCOPE_HELP)
    @app_commands.choices(field=FIELD_CHOICES, scope=SCOPE_CHOICES)
    async def clear(interaction: discord.Interaction, field: str | None = None, scope: str = "channel") -> None:
        await admin.clear(interaction, field, scope)

    return group
