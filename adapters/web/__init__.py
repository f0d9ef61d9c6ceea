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
from adapters.web.limits import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from adapters.web.tokens import TokenSigner
from bot.errors import ConfigError

if TYPE_CHECKING:
    from bot.runtime import Runtime

__all__ = ["WebAdapter", "create"]

log = logging.getLogger(__name__)

MIN_SECRET_CHARS = 16


def create(runtime: Runtime) -> WebAdapter | None:
    """The adapter, or None unless PARLEY_WEB_ENABLED. Rate limits and the fan-out of answers to
    tabs go through Redis when there is one (shared by every replica), else stay in this process."""
    settings = runtime.settings.web
    if not settings.enabled:
        return None
    if settings.secret is None:
        log.warning("PARLEY_WEB_SECRET is unset: visitor tokens are signed with a random key, so "
                    "visitors start new conversations whenever Parley restarts")
        secret = secrets.token_bytes(32)
    else:
        secret = settings.secret.get_secret_value().encode()
        if len(secret) < MIN_SECRET_CHARS:
            raise ConfigError("PARLEY_WEB_SECRET", f"must be at least {MIN_SECRET_CHARS} characters (it signs visitor tokens)")
    limiter: RateLimiter
    fanout: Fanout
    if runtime.redis is not None:
        prefix = f"{runtime.settings.redis.prefix}:web:{settings.site}"
        limiter = RedisRateLimiter(runtime.redis, prefix=prefix)
        fanout = RedisFanout(runtime.redis, prefix=prefix)
    else:
        limiter, fanout = MemoryRateLimiter(), LocalFanout()
    return WebAdapter(
        settings=settings,
        store=runtime.store,
        limiter=limiter,
        signer=TokenSigner(secret, site=settings.site, ttl=settings.token_ttl),
        fanout=fanout,
    )
