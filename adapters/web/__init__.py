"""The embeddable web chat: `tokens` (who a visitor is), `normalize` (frames <-> turns),
`limits` (rate limits), `sessions` (a tab's socket), `intake` (its frames into the inbox),
`fanout` and `sink` (answers to every tab), `pages` (the widget's files), `app` (the server),
`static/` (the widget: plain HTML, CSS and JS, no build step).

`parley serve` finds it through the `parley.adapters` entry point `web = "adapters.web:create"`;
PARLEY_WEB_ENABLED=true turns it on. One tag embeds it in a page:

    <script src="https://parley.example/widget.js" async></script>
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from adapters.web.limits import (
    HOUR,
    Addresses,
    HandoffCaps,
    MemoryAddresses,
    MemoryRateLimiter,
    RateLimiter,
    RedisAddresses,
    RedisRateLimiter,
)
from adapters.web.tokens import TokenSigner
from bot.adapter import AdapterContext, needs_extra

if TYPE_CHECKING:
    from adapters.web.app import WebAdapter
    from adapters.web.fanout import Fanout

__all__ = ["create"]

log = logging.getLogger(__name__)


def create(context: AdapterContext) -> WebAdapter | None:
    """The adapter, or None unless PARLEY_WEB_ENABLED. Rate limits, handoff caps and the fan-out
    of answers to tabs go through Redis when there is one (shared by every replica), else stay
    in this process. With a support desk configured, the handoff caps are registered as the
    gate for web conversations (`bot.handoff.desk.HandoffGate`). A PARLEY_WEB_SECRET too short was
    refused when the settings were read."""
    settings = context.settings.web
    if not settings.enabled:
        return None
    with needs_extra("web", setting="PARLEY_WEB_ENABLED"):  # the HTTP server's libraries (the `web` extra)
        from adapters.web.app import WebAdapter
        from adapters.web.fanout import LocalFanout, RedisFanout
    if settings.secret is None:
        log.warning(
            "PARLEY_WEB_SECRET is unset: visitor tokens are signed with a random key, so "
            "visitors start new conversations whenever Parley restarts"
        )
        secret = secrets.token_bytes(32)
    else:
        secret = settings.secret.get_secret_value().encode()
    limiter: RateLimiter
    fanout: Fanout
    prefix = f"{context.settings.redis.prefix}:web:{settings.site}"
    if context.redis is not None:
        limiter = RedisRateLimiter(context.redis, prefix=prefix)
        fanout = RedisFanout(context.redis, prefix=prefix)
    else:
        limiter, fanout = MemoryRateLimiter(), LocalFanout()
    handoffs = None
    if context.settings.handoff.enabled:
        handoffs = handoff_caps(context, prefix)
        context.register_handoff_gate(WebAdapter.platform, handoffs)
    return WebAdapter(
        settings=settings,
        store=context.store,
        limiter=limiter,
        signer=TokenSigner(secret, site=settings.site, ttl=settings.token_ttl),
        fanout=fanout,
        handoffs=handoffs,
        person=handoffs is not None and context.settings.handoff.on_request,
        page_profile=context.profiles.page_profile,
    )


def handoff_caps(context: AdapterContext, prefix: str) -> HandoffCaps:
    settings = context.settings.web
    per_hour: RateLimiter
    addresses: Addresses
    if context.redis is not None:
        # One slot for all of a handoff's caps: they are checked and counted together, in one script.
        per_hour = RedisRateLimiter(context.redis, prefix=f"{prefix}:handoff", window=HOUR, slot="handoff")
        addresses = RedisAddresses(context.redis, prefix=prefix)
    else:
        per_hour, addresses = MemoryRateLimiter(window=HOUR), MemoryAddresses()
    return HandoffCaps(
        limiter=per_hour,
        addresses=addresses,
        visitor=settings.visitor_handoffs,
        ip=settings.ip_handoffs,
        site=settings.site_handoffs,
    )
