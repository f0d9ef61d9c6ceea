"""Conversation context: the history a prompt is built from, kept in Redis.

Layout per conversation (the `{...}` hash tag keeps them in one Redis Cluster slot):

    {prefix}:ctx:{platform:tenant:channel:thread}:msgs     list of JSON [role, content, tokens]
    {prefix}:ctx:{platform:tenant:channel:thread}:summary  string

A load is one round trip (LRANGE + GET in a pipeline), a save is one round trip
(RPUSH, LTRIM, SET, EXPIRE in a pipeline). The history is bounded by a token
budget; when it overflows it is cut back to `compact_to` of the budget in one
step, so the start of the prompt (and so vLLM's prefix cache) stays the same for
several turns instead of shifting on every turn as a sliding window would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.config import ContextSettings, RedisSettings
from bot.errors import StoreUnavailable
from bot.turns import ConversationKey


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # user | assistant
    content: str
    tokens: int


@dataclass(frozen=True, slots=True)
class Context:
    """A conversation's history, oldest first, and the summary of what was folded away."""

    messages: tuple[Message, ...] = ()
    summary: str = ""

    @property
    def tokens(self) -> int:
        return sum(m.tokens for m in self.messages)


def compact(messages: Sequence[Message], budget: int, target: float) -> int:
    """How many of the oldest messages to drop so the history fits the budget.

    Nothing is dropped while the history fits. Once it does not, the oldest messages
    go until what is left fits `target * budget`, and the cut never leaves an
    assistant message first. This is where a rolling summary will come in: the
    dropped messages are exactly what a summariser would fold into `Context.summary`.
    """
    total = sum(m.tokens for m in messages)
    if total <= budget:
        return 0
    goal = int(budget * target)
    drop = 0
    while drop < len(messages) and (total > goal or messages[drop].role != "user"):
        total -= messages[drop].tokens
        drop += 1
    # Never drop the newest message, even when it alone is over the budget.
    return min(drop, max(len(messages) - 1, 0))


class ContextStore(Protocol):
    async def load(self, key: ConversationKey) -> Context: ...

    async def save(self, key: ConversationKey, before: Context, new: Sequence[Message]) -> Context:
        """Append `new` to the history `before` was loaded as; returns the history now stored."""
        ...

    async def reset(self, key: ConversationKey) -> None: ...


class RedisContextStore:
    def __init__(self, redis: Redis, *, redis_settings: RedisSettings, settings: ContextSettings) -> None:
        self._redis = redis
        self._prefix = redis_settings.prefix
        self._ttl = redis_settings.context_ttl
        self._budget = settings.token_budget
        self._target = settings.compact_to

    def _keys(self, key: ConversationKey) -> tuple[str, str]:
        base = f"{self._prefix}:ctx:{key.hash_tag}"
        return f"{base}:msgs", f"{base}:summary"

    async def load(self, key: ConversationKey) -> Context:
        msgs_key, summary_key = self._keys(key)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                raw, summary = await pipe.lrange(msgs_key, 0, -1).get(summary_key).execute()
        except RedisError as exc:
            raise StoreUnavailable(f"context load failed: {exc}") from exc
        messages = tuple(Message(*json.loads(item)) for item in raw)
        return Context(messages, (summary or b"").decode())

    async def save(self, key: ConversationKey, before: Context, new: Sequence[Message]) -> Context:
        msgs_key, summary_key = self._keys(key)
        messages = (*before.messages, *new)
        drop = compact(messages, self._budget, self._target)
        after = Context(messages[drop:], before.summary)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                if new:
                    pipe.rpush(msgs_key, *(json.dumps([m.role, m.content, m.tokens]) for m in new))
                if drop:
                    pipe.ltrim(msgs_key, drop, -1)
                pipe.expire(msgs_key, self._ttl)
                pipe.expire(summary_key, self._ttl)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"context save failed: {exc}") from exc
        return after

    async def reset(self, key: ConversationKey) -> None:
        try:
            await self._redis.delete(*self._keys(key))
        except RedisError as exc:
            raise StoreUnavailable(f"context reset failed: {exc}") from exc


class MemoryContextStore:
    """The same behaviour in process memory, for `parley chat` with no Redis configured.

    Bounded like the Redis store (token budget per conversation, TTL); it exists for
    the embedded default only, never for a deployment.
    """

    def __init__(self, *, redis_settings: RedisSettings, settings: ContextSettings) -> None:
        self._data: dict[ConversationKey, tuple[float, Context]] = {}
        self._ttl = redis_settings.context_ttl
        self._budget = settings.token_budget
        self._target = settings.compact_to

    async def load(self, key: ConversationKey) -> Context:
        expires, ctx = self._data.get(key, (0.0, Context()))
        return ctx if expires > time.monotonic() else Context()

    async def save(self, key: ConversationKey, before: Context, new: Sequence[Message]) -> Context:
        messages = (*before.messages, *new)
        after = Context(messages[compact(messages, self._budget, self._target) :], before.summary)
        self._data[key] = (time.monotonic() + self._ttl, after)
        return after

    async def reset(self, key: ConversationKey) -> None:
        self._data.pop(key, None)
