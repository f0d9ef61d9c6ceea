"""The Discord adapter: mentions, reply chains, threads, DMs and slash commands, answered
by streaming edits. `normalize` turns discord.py events into turns, `sink` posts and
edits answers, `app` owns the sharded gateway client; `chains` remembers which
conversation each answer belongs to. See deploy/discord/SETUP.md to create the bot."""

from __future__ import annotations

from adapters.discord.app import DiscordAdapter
from adapters.discord.chains import Chains, MemoryChains, RedisChains
from bot.runtime import Runtime

__all__ = ["DiscordAdapter", "create"]


def create(runtime: Runtime) -> DiscordAdapter | None:
    settings = runtime.settings
    if not settings.discord.enabled:
        return None
    chains: Chains = RedisChains(runtime.redis, settings.redis) if runtime.redis is not None else MemoryChains()
    return DiscordAdapter(
        settings=settings.discord, chains=chains, degraded=runtime.degraded, metrics=runtime.metrics,
        answers=runtime.answers,
    )
