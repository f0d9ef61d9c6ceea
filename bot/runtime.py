"""The composition root: creates every shared client once and closes each in order.

`open_runtime()` owns the local engine (if one is started), the LLM client and the
Redis client through one `AsyncExitStack`; everything else is handed what it needs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.config import Settings
from bot.context import ContextStore, MemoryContextStore, RedisContextStore
from bot.dedupe import Deduper, MemoryDeduper, RedisDeduper
from bot.dialogue import DialogueManager
from bot.engine import local_engine
from bot.errors import ConfigError
from bot.handlers import build_handlers
from bot.llm import LLMClient

log = logging.getLogger(__name__)

# Tried when PARLEY_REDIS_URL is unset, so a newcomer with a local Redis keeps context.
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    llm: LLMClient
    store: ContextStore
    deduper: Deduper
    manager: DialogueManager
    redis: Redis | None


def redacted(url: str) -> str:
    """A Redis URL as it may appear in logs: host, port and db, never a password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"


async def _connect_redis(url: str, settings: Settings) -> Redis:
    redis = Redis.from_url(
        url,
        socket_timeout=settings.redis.socket_timeout,
        socket_connect_timeout=settings.redis.socket_timeout,
        health_check_interval=30,
    )
    try:
        await redis.ping()
    except (RedisError, OSError):
        await redis.aclose()
        raise
    return redis


@asynccontextmanager
async def open_runtime(settings: Settings, say: Callable[[str], None] = log.info) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        redis: Redis | None = None
        if settings.redis.url:
            try:
                redis = await _connect_redis(settings.redis.url, settings)
            except (RedisError, OSError) as exc:
                raise ConfigError("PARLEY_REDIS_URL", f"cannot reach Redis at {redacted(settings.redis.url)}: {exc}") from None
        else:
            try:
                redis = await _connect_redis(LOCAL_REDIS, settings)
                say(f"using the local Redis at {LOCAL_REDIS} for context (PARLEY_REDIS_URL is unset)")
            except (RedisError, OSError):
                say("no Redis configured or running locally: context is kept in memory and lost on exit")
        if redis is not None:
            stack.push_async_callback(redis.aclose)
            store: ContextStore = RedisContextStore(redis, redis_settings=settings.redis, settings=settings.context)
            deduper: Deduper = RedisDeduper(redis, settings.redis)
        else:
            store = MemoryContextStore(redis_settings=settings.redis, settings=settings.context)
            deduper = MemoryDeduper(settings.redis)

        base_url = settings.llm.base_url
        if base_url is None:
            base_url = await stack.enter_async_context(local_engine(settings.engine, say))
        llm = await stack.enter_async_context(LLMClient(settings.llm, base_url=base_url))
        if not await llm.health():
            log.warning("the LLM engine at %s is not healthy yet; turns will say so until it is", llm.base_url)

        manager = DialogueManager(
            settings=settings, store=store, deduper=deduper, llm=llm, handlers=build_handlers(settings, llm)
        )
        yield Runtime(settings=settings, llm=llm, store=store, deduper=deduper, manager=manager, redis=redis)
