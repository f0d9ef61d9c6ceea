"""The Slack adapter: `normalize` (payloads -> turns), `intake` (turns -> inbox), `sink` (answers
back), `app` (transport).

`parley serve` finds it through the `parley.adapters` entry point `slack = "adapters.slack:create"`.
Slack's libraries (the `slack` extra) are imported only once Slack is configured, so a
deployment without Slack needs none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from adapters.slack.normalize import PLATFORM, conversation_link
from adapters.slack.recents import MemoryRecents, Recents, RedisRecents
from adapters.slack.threads import MemoryThreads, RedisThreads, ThreadMemory
from bot.adapter import AdapterContext, needs_extra
from bot.errors import ConfigError
from bot.handoff.desk import NamedChannels

if TYPE_CHECKING:
    from slack_sdk.web.async_client import AsyncWebClient

    from adapters.slack.app import SlackAdapter
    from adapters.slack.installs import Installations

__all__ = ["create"]


def create(context: AdapterContext) -> SlackAdapter | None:
    """The adapter, or None when neither SLACK_BOT_TOKEN nor SLACK_CLIENT_ID is set. Checks the
    settings now, so that `parley serve` stops at once with a clear line instead of at the first event."""
    settings = context.settings.slack
    if not settings.enabled:
        return None
    if settings.distributed:
        _check_distributed(context)
    elif settings.app_token is None and settings.signing_secret is None:
        raise ConfigError(
            "SLACK_SIGNING_SECRET",
            "required for the Events API over HTTP (or set SLACK_APP_TOKEN to use Socket Mode)",
        )
    with needs_extra("slack", setting="SLACK_CLIENT_ID" if settings.distributed else "SLACK_BOT_TOKEN"):
        from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator
        from slack_sdk.web.async_client import AsyncWebClient

        from adapters.slack.app import SlackAdapter, client_options, web_client
        from adapters.slack.desk import SlackDesk
        from adapters.slack.installs import Installations, OAuthStates, fernet
    threads: ThreadMemory
    recents: Recents
    if context.redis is not None:
        prefix = context.settings.redis.prefix
        threads = RedisThreads(context.redis, prefix=prefix, ttl=settings.thread_ttl)
        recents = RedisRecents(context.redis, prefix=prefix, ttl=settings.thread_ttl)
    else:
        threads = MemoryThreads(ttl=settings.thread_ttl)
        recents = MemoryRecents(ttl=settings.thread_ttl)
    client = web_client(settings)
    handoff = context.settings.handoff
    installations = states = None
    client_for = None
    if settings.distributed:
        assert context.redis is not None and settings.install_keys is not None  # _check_distributed
        prefix = context.settings.redis.prefix
        installations = Installations(
            context.redis, prefix=prefix, cipher=fernet(settings.install_keys.get_secret_value())
        )
        states = OAuthStates(context.redis, prefix=prefix, ttl=INSTALL_STATE_TTL)
        assert settings.client_id is not None and settings.client_secret is not None
        installations.rotate_with(
            AsyncTokenRotator(
                client_id=settings.client_id,
                client_secret=settings.client_secret.get_secret_value(),
                client=AsyncWebClient(**client_options(settings)),
            )
        )
        client_for = _installed(installations, client, client_options(settings))
    # The support desk, in the default channel (PARLEY_HANDOFF_SLACK_CHANNEL, one workspace) and
    # in those the profiles name (`handoff_channel`, which any profile may set at run time: so
    # the desk is there even without a default). The adapter offers it to the dialogue manager
    # once Slack has confirmed the default is private (`SlackDesk.verify`); the others are
    # checked before their first ticket.
    desk = SlackDesk(
        client,
        channel=handoff.slack_channel,
        store=context.tickets,
        links=context.links,
        limit=settings.message_limit,
        allow_public=handoff.allow_public_channel,
        agent_groups=handoff.agent_groups,
        agent_refresh=handoff.agent_refresh,
        client_for=client_for,
        named=NamedChannels(context.profiles),
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
        installations=installations,
        states=states,
        profiles=context.profiles,  # the pane's suggested prompts and the Home tab's handlers
        recents=recents,  # the Home tab's recent conversations
        person=context.offers_person,
    )


INSTALL_STATE_TTL = 600  # seconds an "Add to Slack" may take from /slack/install to the redirect back


def _check_distributed(context: AdapterContext) -> None:
    """What serving many workspaces needs, each missing piece named."""
    settings = context.settings.slack
    needed = {
        "SLACK_CLIENT_SECRET": settings.client_secret is None,
        "SLACK_SIGNING_SECRET": settings.signing_secret is None,
        "SLACK_INSTALL_KEYS": settings.install_keys is None,
    }
    for name, missing in needed.items():
        if missing:
            raise ConfigError(name, "required with SLACK_CLIENT_ID (the install for many workspaces)")
    if settings.bot_token is not None:
        raise ConfigError("SLACK_BOT_TOKEN", "set it for one workspace or SLACK_CLIENT_ID for many, not both")
    if settings.app_token is not None:
        raise ConfigError("SLACK_APP_TOKEN", "Socket Mode serves one workspace; many are served over the Events API")
    if context.redis is None:
        raise ConfigError("PARLEY_REDIS_URL", "required with SLACK_CLIENT_ID: the installations are kept in Redis")
    # A channel id, a user group id is one workspace's: with many, each workspace names its own
    # desk channel (`handoff_channel` in its profiles: the tenants file or /parley config).
    if context.settings.handoff.slack_channel is not None:
        raise ConfigError(
            "PARLEY_HANDOFF_SLACK_CHANNEL",
            "a channel of one workspace; with SLACK_CLIENT_ID each workspace names its own support channel: "
            "handoff_channel in its section of the tenants file, or /parley config",
        )
    if context.settings.handoff.agent_groups:
        raise ConfigError(
            "PARLEY_HANDOFF_AGENT_GROUPS",
            "user groups of one workspace; with SLACK_CLIENT_ID the agents are each workspace's people "
            "in its support channel",
        )


def _installed(
    installations: Installations, client: AsyncWebClient, options: dict[str, Any]
) -> Callable[[str], AsyncWebClient]:
    """Each workspace's client, for its support desk: its installation's token, read when a call
    starts, over the adapter's one session (`client.session`, opened when the adapter runs)."""
    from adapters.slack.installs import InstalledClient

    def client_for(tenant: str) -> AsyncWebClient:
        return InstalledClient(installations, tenant, session=client.session, **options)

    return client_for
