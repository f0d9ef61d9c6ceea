"""The Slack adapter: `normalize` (payloads -> turns), `intake` (turns -> inbox), `sink` (answers
back), `app` (transport).

`parley serve` finds it through the `parley.adapters` entry point `slack = "adapters.slack:create"`.
Slack's libraries (the `slack` extra) are imported only once Slack is configured, so a
deployment without Slack needs none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.slack.normalize import PLATFORM, conversation_link
from adapters.slack.threads import MemoryThreads, RedisThreads, ThreadMemory
from bot.adapter import AdapterContext, needs_extra
from bot.errors import ConfigError

if TYPE_CHECKING:
    from adapters.slack.app import SlackAdapter

__all__ = ["create"]


def create(context: AdapterContext) -> SlackAdapter | None:
    """The adapter, or None when SLACK_BOT_TOKEN is unset. Checks the settings now, so that
    `parley serve` stops at once with a clear line instead of at the first event."""
    settings = context.settings.slack
    if not settings.enabled:
        return None
    if settings.app_token is None and settings.signing_secret is None:
        raise ConfigError(
            "SLACK_SIGNING_SECRET",
            "required for the Events API over HTTP (or set SLACK_APP_TOKEN to use Socket Mode)",
        )
    with needs_extra("slack", setting="SLACK_BOT_TOKEN"):
        from adapters.slack.app import SlackAdapter, web_client
        from adapters.slack.desk import SlackDesk
    threads: ThreadMemory
    if context.redis is not None:
        threads = RedisThreads(context.redis, prefix=context.settings.redis.prefix, ttl=settings.thread_ttl)
    else:
        threads = MemoryThreads(ttl=settings.thread_ttl)
    client = web_client(settings)
    desk = None
    handoff = context.settings.handoff
    if handoff.slack_channel is not None:
        # The support desk: the adapter registers it for the dialogue manager, which opens tickets
        # through it, once Slack has confirmed the channel is private (`SlackDesk.verify`).
        desk = SlackDesk(
            client,
            channel=handoff.slack_channel,
            store=context.tickets,
            links=context.links,
            limit=settings.message_limit,
            allow_public=handoff.allow_public_channel,
            agent_groups=handoff.agent_groups,
            agent_refresh=handoff.agent_refresh,
        )
    context.register_link(PLATFORM, conversation_link)
    return SlackAdapter(
        settings=settings,
        deduper=context.deduper,
        threads=threads,
        metrics=context.metrics,
        client=client,
        desk=desk,
        register_desk=context.register_desk,
        answers=context.answers,
    )
