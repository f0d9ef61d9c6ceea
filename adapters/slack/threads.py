"""Which channel threads Parley is in, so that replies there need no new @mention; and which
DM threads are assistant-pane threads (Slack's "AI apps"), with the channel the user is looking
at beside them and whether their first question (which titles the thread) has been asked.

Kept in Redis when the runtime has one (shared by every replica, survives restarts,
each thread expires `thread_ttl` seconds after its last turn), else in a bounded
in-process map for the single-process default.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.store.redis import as_text
from bot.turns import ConversationKey

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pane:
    """An assistant-pane thread, as a message in it finds it."""

    viewing: str  # the channel the user is looking at beside the pane ("": none)
    first: bool  # this is the thread's first question


class ThreadMemory(Protocol):
    async def join(self, key: ConversationKey) -> None:
        """Remember (or refresh) that Parley takes part in this thread."""
        ...

    async def joined(self, key: ConversationKey) -> bool: ...

    async def open_pane(self, key: ConversationKey, viewing: str) -> None:
        """An assistant-pane thread started, or its user moved to another channel (`viewing`).
        Never raises: a lost entry only means no title and no status in that thread."""
        ...

    async def pane(self, key: ConversationKey, *, asking: bool) -> Pane | None:
        """The assistant-pane thread a message arrived in (None: `key` is no such thread). The
        first call `asking` a question (not a command word) says `first`; no later one does, on
        any replica."""
        ...


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

    def _pane_key(self, key: ConversationKey) -> str:
        return f"{self._prefix}:slack:pane:{key.tenant}:{key.channel}:{key.thread}"

    async def open_pane(self, key: ConversationKey, viewing: str) -> None:
        name = self._pane_key(key)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(name, "viewing", viewing)
                pipe.expire(name, self._ttl)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not remember assistant thread %s: %s", key, exc)

    async def pane(self, key: ConversationKey, *, asking: bool) -> Pane | None:
        name = self._pane_key(key)
        try:
            found = await self._redis.hgetall(name)
            if not found:
                return None
            fields = {as_text(k): as_text(v) for k, v in found.items()}
            first = False
            if asking and "asked" not in fields:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hsetnx(name, "asked", 1)  # one replica wins the first question
                    pipe.expire(name, self._ttl)
                    first = bool((await pipe.execute())[0])
            return Pane(viewing=fields.get("viewing", ""), first=first)
        except RedisError as exc:
            log.warning("could not look up assistant thread %s: %s", key, exc)
            return None


class MemoryThreads:
    """In-process twin, bounded in size and time."""

    def __init__(self, *, ttl: int, max_entries: int = 100_000) -> None:
        self._until: OrderedDict[ConversationKey, float] = OrderedDict()
        self._panes: OrderedDict[ConversationKey, tuple[str, bool]] = OrderedDict()  # (viewing, asked)
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

    async def open_pane(self, key: ConversationKey, viewing: str) -> None:
        asked = self._panes.pop(key, ("", False))[1]
        self._panes[key] = (viewing, asked)
        while len(self._panes) > self._max:
            self._panes.popitem(last=False)

    async def pane(self, key: ConversationKey, *, asking: bool) -> Pane | None:
        found = self._panes.get(key)
        if found is None:
            return None
        viewing, asked = found
        self._panes[key] = (viewing, asked or asking)
        return Pane(viewing=viewing, first=asking and not asked)
