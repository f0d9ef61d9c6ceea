"""The embeddable web chat: `tokens` (who a visitor is), `normalize` (frames <-> turns),
`limits` (rate limits), `fanout` and `sink` (answers to every tab), `app` (HTTP + WebSocket),
`static/` (the widget: plain HTML, CSS and JS, no build step).

`parley serve` finds it through the `parley.adapters` entry point `web = "adapters.web:create"`;
PARLEY_WEB_ENABLED=true turns it on. One tag embeds it in a page:

    <script src="https://parley.example/widget.js" async></script>
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from adapters.web.app import WebAdapter
from adapters.web.fanout import Fanout, LocalFanout, RedisFanout
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

if TYPE_CHECKING:
    from bot.runtime import Runtime

__all__ = ["WebAdapter", "create"]

log = logging.getLogger(__name__)


def create(runtime: Runtime) -> WebAdapter | None:
    """The adapter, or None unless PARLEY_WEB_ENABLED. Rate limits, handoff caps and the fan-out
    of answers to tabs go through Redis when there is one (shared by every replica), else stay
    in this process. With a support desk configured, the handoff caps become the runtime's
    gate for web conversations (`bot.handoff.flow.HandoffGate`). A PARLEY_WEB_SECRET too short was
    refused when the settings were read."""
    settings = runtime.settings.web
    if not settings.enabled:
        return None
    if settings.secret is None:
        log.warning("PARLEY_WEB_SECRET is unset: visitor tokens are signed with a random key, so "
                    "visitors start new conversations whenever Parley restarts")
        secret = secrets.token_bytes(32)
    else:
        secret = settings.secret.get_secret_value().encode()
    limiter: RateLimiter
    fanout: Fanout
    prefix = f"{runtime.settings.redis.prefix}:web:{settings.site}"
    if runtime.redis is not None:
        limiter = RedisRateLimiter(runtime.redis, prefix=prefix)
        fanout = RedisFanout(runtime.redis, prefix=prefix)
    else:
        limiter, fanout = MemoryRateLimiter(), LocalFanout()
    handoffs = None
    if runtime.settings.handoff.enabled:
        handoffs = handoff_caps(runtime, prefix)
        runtime.handoff_gates[WebAdapter.platform] = handoffs
    return WebAdapter(
        settings=settings,
        store=runtime.store,
        limiter=limiter,
        signer=TokenSigner(secret, site=settings.site, ttl=settings.token_ttl),
        fanout=fanout,
        handoffs=handoffs,
    )


def handoff_caps(runtime: Runtime, prefix: str) -> HandoffCaps:
    settings = runtime.settings.web
    per_hour: RateLimiter
    addresses: Addresses
    if runtime.redis is not None:
        # One slot for all of a handoff's caps: they are checked and counted together, in one script.
        per_hour = RedisRateLimiter(runtime.redis, prefix=f"{prefix}:handoff", window=HOUR, slot="handoff")
        addresses = RedisAddresses(runtime.redis, prefix=prefix)
    else:
        per_hour, addresses = MemoryRateLimiter(window=HOUR), MemoryAddresses()
    return HandoffCaps(
        limiter=per_hour, addresses=addresses,
        visitor=settings.visitor_handoffs, ip=settings.ip_handoffs, site=settings.site_handoffs,
    )
