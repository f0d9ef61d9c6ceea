"""The inbox between adapters and dialogue workers.

An adapter puts a turn in and acknowledges the platform; workers take turns out.
Here it is an in-process queue (the bot as one process); the same protocol is
what a Redis Stream with a consumer group implements when the bot runs as
several replicas. The bound is the back-pressure: when it is full, `put` fails at
once with `InboxFull` and the adapter tells the user to try again, instead of an
unbounded queue growing in memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from bot.errors import InboxClosed, InboxFull
from bot.turns import Turn


class Inbox(Protocol):
    async def put(self, turn: Turn) -> None:
        """Take a turn, or raise `InboxFull` at once."""
        ...

    async def get(self) -> Turn:
        """The next turn, waiting for one; `InboxClosed` once closed and empty."""
        ...


class MemoryInbox:
    def __init__(self, maxsize: int) -> None:
        self._turns: deque[Turn] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._turns)

    async def put(self, turn: Turn) -> None:
        if self._closed:
            raise InboxClosed("the inbox is closed for shutdown")
        if len(self._turns) >= self._maxsize:
            raise InboxFull(f"{len(self._turns)} turns waiting")
        async with self._ready:
            self._turns.append(turn)
            self._ready.notify()

    async def get(self) -> Turn:
        async with self._ready:
            await self._ready.wait_for(lambda: self._turns or self._closed)
            if not self._turns:
                raise InboxClosed("the inbox is closed")
            return self._turns.popleft()

    async def close(self) -> None:
        """Stop taking turns; those already in are still handed out."""
        async with self._ready:
            self._closed = True
            self._ready.notify_all()
