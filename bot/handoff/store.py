"""Where handoff state lives (every replica sees the same). Per conversation, under its hash tag,

    {prefix}:handoff:{conversation}            JSON ticket while handed off
    {prefix}:handoff:{conversation}:failures   failed answers in a row

and per desk thread (looked up by the thread, so not under the conversation's tag)

    {prefix}:handoff:thread:{desk}:{thread}    JSON ticket the thread was opened for

all expiring with the context (`PARLEY_REDIS_CONTEXT_TTL`, refreshed while people talk).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.handoff.desk import Ticket
from bot.store.redis import store_errors
from bot.turns import ConversationKey

log = logging.getLogger(__name__)


class HandoffStore(Protocol):
    async def ticket(self, key: ConversationKey) -> Ticket | None:
        """The open ticket of a conversation, or None while the bot answers it."""
        ...

    async def open(self, ticket: Ticket) -> None:
        """The conversation is handed off: remember its ticket and the thread's way back to it."""
        ...

    async def touch(self, ticket: Ticket) -> None:
        """Keep a ticket people are working on from expiring."""
        ...

    async def close(self, key: ConversationKey) -> None:
        """Handed back. The thread's mapping stays (until it expires), so a late message
        in the thread is recognised and answered with a notice instead of being lost."""
        ...

    async def by_thread(self, desk: str, thread: str) -> Ticket | None:
        """The ticket a desk thread was opened for (open or closed), or None."""
        ...

    async def failed(self, key: ConversationKey) -> int:
        """One more failed answer in a row; returns how many now."""
        ...

    async def answered(self, key: ConversationKey) -> None:
        """An answer got through: the run of failures is over."""
        ...


class RedisHandoffStore:
    def __init__(self, redis: Redis, *, prefix: str, ttl: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl

    def _state(self, key: ConversationKey) -> str:
        return f"{self._prefix}:handoff:{key.hash_tag}"

    def _thread(self, desk: str, thread: str) -> str:
        return f"{self._prefix}:handoff:thread:{desk}:{thread}"

    async def ticket(self, key: ConversationKey) -> Ticket | None:
        with store_errors("handoff state read failed"):
            raw = await self._redis.get(self._state(key))
        return Ticket.from_json(raw) if raw else None

    async def open(self, ticket: Ticket) -> None:
        raw = ticket.to_json()
        with store_errors("handoff state write failed"):
            # Two slots in a cluster (the thread is not under the conversation's tag): no
            # transaction. The thread first, so a reply written at once already finds its way.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._thread(ticket.desk, ticket.thread), raw, ex=self._ttl)
                pipe.set(self._state(ticket.key), raw, ex=self._ttl)
                pipe.delete(self._state(ticket.key) + ":failures")
                await pipe.execute()

    async def touch(self, ticket: Ticket) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.expire(self._state(ticket.key), self._ttl)
                pipe.expire(self._thread(ticket.desk, ticket.thread), self._ttl)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not refresh the expiry of ticket %s: %s", ticket.thread, exc)

    async def close(self, key: ConversationKey) -> None:
        with store_errors("handoff state write failed"):
            await self._redis.delete(self._state(key))

    async def by_thread(self, desk: str, thread: str) -> Ticket | None:
        with store_errors("ticket look-up failed"):
            raw = await self._redis.get(self._thread(desk, thread))
        return Ticket.from_json(raw) if raw else None

    async def failed(self, key: ConversationKey) -> int:
        counter = self._state(key) + ":failures"
        with store_errors("failure count failed"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(counter)
                pipe.expire(counter, self._ttl)
                count, _ = await pipe.execute()
        return int(count)

    async def answered(self, key: ConversationKey) -> None:
        with store_errors("failure count reset failed"):
            await self._redis.delete(self._state(key) + ":failures")


class MemoryHandoffStore:
    """In-process twin for `parley chat` without Redis; bounded, and without expiry (the
    process's life is shorter than a ticket's)."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._open: dict[ConversationKey, Ticket] = {}
        self._threads: OrderedDict[tuple[str, str], Ticket] = OrderedDict()
        self._failures: OrderedDict[ConversationKey, int] = OrderedDict()
        self._max = max_entries

    async def ticket(self, key: ConversationKey) -> Ticket | None:
        return self._open.get(key)

    async def open(self, ticket: Ticket) -> None:
        self._threads[(ticket.desk, ticket.thread)] = ticket
        while len(self._threads) > self._max:
            self._threads.popitem(last=False)
        self._open[ticket.key] = ticket
        self._failures.pop(ticket.key, None)

    async def touch(self, ticket: Ticket) -> None:
        return None

    async def close(self, key: ConversationKey) -> None:
        self._open.pop(key, None)

    async def by_thread(self, desk: str, thread: str) -> Ticket | None:
        return self._threads.get((desk, thread))

    async def failed(self, key: ConversationKey) -> int:
        self._failures[key] = self._failures.pop(key, 0) + 1
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)
        return self._failures[key]

    async def answered(self, key: ConversationKey) -> None:
        self._failures.pop(key, None)
