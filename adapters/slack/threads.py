"""Which channel threads Parley is in, so that replies there need no new @mention.

Kept in Redis when the runtime has one (shared by every replica, survives restarts,
each thread expires `thread_ttl` seconds after its last turn), else in a bounded
in-process map for the single-process default.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.turns import ConversationKey

log = logging.getLogger(__name__)


class ThreadMemory(Protocol):
    async def join(self, key: ConversationKey) -> None:
        """Remember (or refresh) that Parley takes part in this thread."""
        ...

    async def joined(self, key: ConversationKey) -> bool: ...


class RedisThreads:
    def __init__(self, redis: Redis, *, prefix: str, ttl: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl

    def _key(self, key: ConversationKey) -> str:
        return f"{self._prefix}:slack:thread:{key.tenant}:{key.channel}:{key.thread}"

    async def join(self, key: ConversationKey) -> None:
        try:
            await self._redis.set(self._key(key), 1, ex=self._ttl)
        except RedisError as exc:
            # The mention itself is still answered; only follow-ups without a mention are missed.
            log.warning("could not remember thread %s: %s", key, exc)

    async def joined(self, key: ConversationKey) -> bool:
        try:
            return bool(await self._redis.exists(self._key(key)))
        except RedisError as exc:
            log.warning("could not look up thread %s: %s", key, exc)
            return False


class MemoryThreads:
    """In-process twin, bounded in size and time."""

    def __init__(self, *, ttl: int, max_entries: int = 100_000) -> None:
        self._until: OrderedDict[ConversationKey, float] = OrderedDict()
        self._ttl = ttl
        self._max = max_entries

    async def join(self, key: ConversationKey) -> None:
        self._until.pop(key, None)
        self._until[key] = time.monotonic() + self._ttl
        while len(self._until) > self._max:
            self._until.popitem(last=False)

    async def joined(self, key: ConversationKey) -> bool:
        until = self._until.get(key)
        if until is None or until < time.monotonic():
            self._until.pop(key, None)
            return False
        return True
