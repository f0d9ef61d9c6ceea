"""Turns of one conversation one after another: a FIFO lock per conversation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.turns import ConversationKey


class KeyedLocks:
    """One FIFO lock per conversation, kept only while someone holds or waits for it.

    `hold` takes the lock before its first suspension, so turns that start in
    arrival order also acquire in arrival order (asyncio.Lock is fair).
    """

    def __init__(self) -> None:
        self._locks: dict[ConversationKey, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: ConversationKey) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]
