"""Dropping platform retries: the first claim of an event id wins, later ones are duplicates."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.config import RedisSettings
from bot.errors import StoreUnavailable
from bot.store.batching import RedisBatcher
from bot.turns import Turn


def event_key(turn: Turn) -> str:
    # Event ids are unique per platform and tenant, not across them.
    return f"{turn.platform}:{turn.tenant}:{turn.event_id}"


class Deduper(Protocol):
    async def claim(self, turn: Turn) -> bool:
        """True the first time this turn's event is seen, False for every retry of it."""
        ...


# The claim is stored as the id the inbox gave this delivery of the turn (`Turn.uid`), so the
# same inbox entry taken over by another worker (its first worker died mid-turn) claims it
# again, and a platform retry, which arrives as a new entry with a new id, does not. (Not the
# sequence number: numbering can start again, and a retry could be given the same number.)
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if ARGV[1] ~= '' and held == ARGV[1] then return 1 end
return 0
"""


class RedisDeduper:
    """The first claim of an event wins: atomic across every replica that shares the Redis."""

    def __init__(self, redis: Redis, settings: RedisSettings, *, batcher: RedisBatcher | None = None) -> None:
        self._batch = batcher or RedisBatcher(redis)  # shared with the context store: see RedisContextStore
        self._prefix = settings.prefix
        self._ttl = settings.dedupe_ttl

    async def claim(self, turn: Turn) -> bool:
        try:
            [won] = await self._batch.execute(
                ("EVAL", _CLAIM, 1, f"{self._prefix}:seen:{event_key(turn)}", turn.uid, self._ttl)
            )
        except RedisError as exc:
            raise StoreUnavailable(f"dedupe failed: {exc}") from exc
        return bool(won)


class MemoryDeduper:
    """In-process twin for the embedded default; bounded in size and time."""

    def __init__(self, settings: RedisSettings, *, max_entries: int = 100_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._ttl = settings.dedupe_ttl
        self._max = max_entries

    async def claim(self, turn: Turn) -> bool:
        now = time.monotonic()
        while self._seen and (len(self._seen) >= self._max or next(iter(self._seen.values())) < now):
            self._seen.popitem(last=False)
        key = event_key(turn)
        if key in self._seen:
            return False
        self._seen[key] = now + self._ttl
        return True
