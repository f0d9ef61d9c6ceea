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
conversation of the channel. Every answer is ephemeral: only the admin sees it, and a change
waits on Redis, so it is deferred first (Discord wants an answer within 3 seconds).
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from adapters.discord.intake import note
from adapters.discord.normalize import Place, channel_ids, place_of
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


class Admin:
    """What `/config show|set|clear` does, once Discord has routed it here (`config_group`)."""

    def __init__(self, *, settings: DiscordSettings, profiles: Profiles, refresh: float) -> None:
        self._settings = settings
        self._profiles = profiles
        self._refresh = refresh  # PARLEY_TENANTS_REFRESH: how soon the other replicas follow

    async def show(self, interaction: discord.Interaction) -> None:
        place = await self._place(interaction, "show")
        if place is None:
            return
        rows = self._profiles.show(place.tenant, place.channel)
        lines = [f"`{name}`: {shown(value)} ({source})" for name, value, source in rows]
        log.info("/config show in %s/%s by %s", place.tenant, place.channel, interaction.user.id)
        await note(interaction, fitted(messages.discord_config_shown(lines, thread=place.thread_id is not None)))

    async def set(self, interaction: discord.Interaction, field: str, value: str) -> None:
        place = await self._place(interaction, "set")
        if place is None or not await self._deferred(interaction):
            return
        try:
            change = await self._profiles.set(
                place.tenant, place.channel, field, parse_value(value), by=by(interaction)
            )
        except TenantConfigError as exc:  # logged by `Profiles`; the profile in force stays
            text = messages.discord_config_refused(f"`{exc.field}`: {escaped(exc.reason)}")
        except StoreUnavailable as exc:
            log.warning("/config set %s in %s/%s: %s; told the admin", field, place.tenant, place.channel, exc)
            text = messages.DISCORD_CONFIG_STORE_DOWN
        else:
            if change is None:
                text = messages.discord_config_unchanged(field, shown(parse_value(value)))
            else:
                text = messages.discord_config_set(field, shown(change.new), seconds=self._refresh)
        await answer(interaction, fitted(text))

    async def clear(self, interaction: discord.Interaction, field: str | None) -> None:
        place = await self._place(interaction, "clear")
        if place is None or not await self._deferred(interaction):
            return
        try:
            changes: list[Change] = await self._profiles.clear(place.tenant, place.channel, field, by=by(interaction))
        except StoreUnavailable as exc:
            log.warning("/config clear in %s/%s: %s; told the admin", place.tenant, place.channel, exc)
            text = messages.DISCORD_CONFIG_STORE_DOWN
        else:
            if changes:
                text = messages.discord_config_cleared([c.field for c in changes], seconds=self._refresh)
            else:
                log.info("/config clear %s in %s/%s: nothing to clear", field or "(all)", place.tenant, place.channel)
                text = messages.DISCORD_CONFIG_NOTHING_TO_CLEAR
        await answer(interaction, fitted(text))

    async def _place(self, interaction: discord.Interaction, action: str) -> Place | None:
        """The channel whose profile this is, or None when the caller was told why not: outside a
        server, without Manage Server, or where Parley does not answer (the allow-lists)."""
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
        return place

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
    async def show(interaction: discord.Interaction) -> None:
        await admin.show(interaction)

    @group.command(name="set", description="Change one setting of this channel")
    @app_commands.describe(field="The setting", value='Its new value: text, or TOML: ["chat", "qa"], true, 5')
    @app_commands.choices(field=FIELD_CHOICES)
    async def set_(interaction: discord.Interaction, field: str, value: str) -> None:
        await admin.set(interaction, field, value)

    @group.command(name="clear", description="Undo /config changes here: the tenants file's settings apply again")
    @app_commands.describe(field="The setting (default: every one changed with /config here)")
    @app_commands.choices(field=FIELD_CHOICES)
    async def clear(interaction: discord.Interaction, field: str | None = None) -> None:
        await admin.clear(interaction, field)

    return group
