"""/help on Discord: what this deployment offers, read from what it registered and configured.

The commands are read from the client's own command tree, so /help lists exactly what Discord
shows: /config only where there are run-time profiles, the message commands, and whatever is
added later (`messages.DISCORD_COMMANDS` has the words for each; a command without any is
still listed by name). Where each question gets a thread is read from the settings
(DISCORD_OPEN_THREADS, this server's DISCORD_THREAD_CHANNELS), and how the channel /help was
asked in treats messages from the mention rule of the profile in force there, its own or its
category's (`scopes.PlaceProfiles`), as a message there is treated. The words are
`bot.messages.discord_help`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import discord
from discord import app_commands

from adapters.discord.normalize import tenant_of
from adapters.discord.scopes import PlaceProfiles
from bot import messages
from bot.config import DiscordSettings
from bot.turns import Turn


class Guide:
    """The text of /help where it is asked."""

    def __init__(self, *, settings: DiscordSettings, places: PlaceProfiles, person: Callable[[Turn], bool]) -> None:
        self._settings = settings
        self._places = places
        self._person = person  # whether a desk takes a turn's requests: "Talk to a person" under answers

    def text(self, interaction: discord.Interaction, turn: Turn) -> str:
        """/help for `turn`, the command's own (the desk, like the mention rule, is its place's)."""
        tree = getattr(interaction.client, "tree", None)
        slash: list[str] = []
        menus: list[str] = []
        if isinstance(tree, app_commands.CommandTree):
            slash = [c.name for c in tree.get_commands(type=discord.AppCommandType.chat_input)]
            menus = [c.name for c in tree.get_commands(type=discord.AppCommandType.message)]
        here = "mention"
        if interaction.guild_id is not None:
            here = self._places.mention_rule(tenant_of(interaction.guild_id), interaction.channel)
        return messages.discord_help(
            commands=slash,
            message_commands=menus,
            dms=self._settings.dms_allowed,
            here=here,
            open_threads=self._settings.open_threads,
            thread_channels=self._thread_channels(interaction.guild),
            person=self._person(turn),
            user_install=self._settings.user_install,
        )

    def _thread_channels(self, guild: discord.Guild | None) -> list[str]:
        """This server's thread channels (DISCORD_THREAD_CHANNELS): another server's are not the
        asker's business, and outside a server there are none."""
        if guild is None:
            return []
        return [str(c) for c in self._settings.thread_channels if guild.get_channel(c) is not None]
