"""The Slack adapter: `normalize` (payloads -> turns), `sink` (answers back), `app` (transport).

`parley serve` finds it through the `parley.adapters` entry point `slack = "adapters.slack:create"`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.slack.app import SlackAdapter, web_client
from adapters.slack.desk import SlackDesk
from adapters.slack.threads import MemoryThreads, RedisThreads, ThreadMemory
from bot.errors import ConfigError

if TYPE_CHECKING:
    from bot.runtime import Runtime

__all__ = ["SlackAdapter", "create"]


def create(runtime: Runtime) -> SlackAdapter | None:
    """The adapter, or None when SLACK_BOT_TOKEN is unset. Checks the settings now, so that
    `parley serve` stops at once with a clear line instead of at the first event."""
    settings = runtime.settings.slack
    if not settings.enabled:
        return None
    if settings.app_token is None and settings.signing_secret is None:
        raise ConfigError(
            "SLACK_SIGNING_SECRET",
            "required for the Events API over HTTP (or set SLACK_APP_TOKEN to use Socket Mode)",
        )
    threads: ThreadMemory
    if runtime.redis is not None:
        threads = RedisThreads(runtime.redis, prefix=runtime.settings.redis.prefix, ttl=settings.thread_ttl)
    else:
        threads = MemoryThreads(ttl=settings.thread_ttl)
    client = web_client(settings)
    desk = None
    handoff = runtime.settings.handoff
    if handoff.slack_channel is not None:
        # The support desk: the adapter registers it for the dialogue manager, which opens tickets
        # through it, once Slack has confirmed the channel is private (`SlackDesk.verify`).
        desk = SlackDesk(
            client, channel=handoff.slack_channel, store=runtime.handoffs, limit=settings.message_limit,
            allow_public=handoff.allow_public_channel, agent_groups=handoff.agent_groups,
            agent_refresh=handoff.agent_refresh,
        )
    return SlackAdapter(
        settings=settings, deduper=runtime.deduper, threads=threads, metrics=runtime.metrics, client=client,
        desk=desk, desks=runtime.desks, answers=runtime.answers,
    )
