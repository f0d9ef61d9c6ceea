"""The Discord adapter: mentions, reply chains, threads, DMs and slash commands, answered
by streaming edits. `normalize` turns discord.py events into turns, `sink` posts and
edits answers, `app` owns the sharded gateway client, `intake` picks the events meant for
Parley and puts their turns into the inbox; `chains` remembers which conversation each
answer belongs to. See deploy/discord/SETUP.md to create the bot.
discord.py (the `discord` extra) is imported only once Discord is configured."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.discord.chains import Chains, MemoryChains, RedisChains
from bot.adapter import AdapterContext, needs_extra

if TYPE_CHECKING:
    from adapters.discord.app import DiscordAdapter

__all__ = ["create"]


def create(context: AdapterContext) -> DiscordAdapter | None:
    settings = context.settings
    if not settings.discord.enabled:
        return None
    with needs_extra("discord", setting="DISCORD_TOKEN"):
        from adapters.discord.app import DiscordAdapter
        from adapters.discord.normalize import PLATFORM, conversation_link
    chains: Chains = RedisChains(context.redis, settings.redis) if context.redis is not None else MemoryChains()
    context.register_link(PLATFORM, conversation_link)
    return DiscordAdapter(
        settings=settings.discord,
        chains=chains,
        degraded=context.degraded,
        metrics=context.metrics,
        answers=context.answers,
        person=context.offers_person,
        profiles=context.profiles,
        refresh=settings.tenants.refresh,  # how soon every replica has a /config change
    )
