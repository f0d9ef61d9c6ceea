"""Which conversation a Discord message belongs to, for follow-ups without a mention.

A reply to one of Parley's answers continues that answer's conversation, however
long the reply chain has grown; a message in a thread Parley answers in continues
the thread's. Discord only tells us the message replied to, so each answer
message Parley posts (and each thread it talks in) is remembered with its
conversation id: in Redis, under the bot's prefix and with the context's expiry
(a conversation whose context has expired has nothing to continue), or, without
Redis, in a bounded in-process map.

Beside them, the question each answer answered (by the answered turn's event id), so that
its Regenerate button can ask it again on any replica and after a restart; kept as long.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.config import RedisSettings
from bot.errors import StoreUnavailable
from bot.store.redis import as_text


class Chains(Protocol):
    async def remember(self, message_id: str, conversation: str) -> None: ...

    async def conversation_of(self, message_id: str) -> str | None:
        """The conversation `message_id` belongs to, if Parley remembers it."""
        ...

    async def remember_question(self, event_id: str, question: str) -> None: ...

    async def question_of(self, event_id: str) -> str | None:
        """The question (JSON, `sink.question_json`) the turn `event_id` asked, if Parley remembers it."""
        ...


class RedisChains:
    def __init__(self, redis: Redis, settings: RedisSettings) -> None:
        self._redis = redis
        self._prefix = f"{settings.prefix}:discord:conv:"
        self._asked = f"{settings.prefix}:discord:asked:"
        self._ttl = settings.context_ttl

    async def remember(self, message_id: str, conversation: str) -> None:
        await self._set(self._prefix + message_id, conversation, "a Discord reply chain")

    async def conversation_of(self, message_id: str) -> str | None:
        return await self._get(self._prefix + message_id, "a Discord reply chain")

    async def remember_question(self, event_id: str, question: str) -> None:
        await self._set(self._asked + event_id, question, "an answered question")

    async def question_of(self, event_id: str) -> str | None:
        return await self._get(self._asked + event_id, "an answered question")

    async def _set(self, key: str, value: str, what: str) -> None:
        try:
            await self._redis.set(key, value, ex=self._ttl)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cannot save {what}: {exc}") from exc

    async def _get(self, key: str, what: str) -> str | None:
        try:
            value = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cannot read {what}: {exc}") from exc
        return as_text(value) if value is not None else None


class MemoryChains:
    """For a bot without Redis (its context is in memory too): the newest `max_entries`."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._map: OrderedDict[str, str] = OrderedDict()
        self._max = max_entries

    async def remember(self, message_id: str, conversation: str) -> None:
        self._map[message_id] = conversation
        self._map.move_to_end(message_id)
        while len(self._map) > self._max:
            self._map.popitem(last=False)

    async def conversation_of(self, message_id: str) -> str | None:
        return self._map.get(message_id)

    async def remember_question(self, event_id: str, question: str) -> None:
        await self.remember("asked:" + event_id, question)  # message ids are digits: no clash

    async def question_of(self, event_id: str) -> str | None:
        return self._map.get("asked:" + event_id)
