"""Turns the inbox could not take while Redis was unreachable, kept in memory and put again.

Discord, unlike Slack, never delivers a gateway event twice on request: a message the
inbox refuses is gone unless Parley keeps it. `RetryBuffer` keeps such turns, in
arrival order and up to a bound, and one task puts them again with backoff (0.2 s
doubling to 5 s) until the inbox takes them. While it holds any, new turns queue
behind them, so a conversation's messages still reach the inbox in order. What is
still held at shutdown is lost, and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from bot.errors import InboxUnavailable
from bot.logs import turn_fields
from bot.turns import Turn

log = logging.getLogger(__name__)


class RetryBuffer:
    """`put` is tried again for each held turn; it raises `InboxUnavailable` to mean "later".
    Any other failure of a held turn is logged and the turn dropped, so one bad turn never
    holds up the rest."""

    def __init__(
        self,
        put: Callable[[Turn], Awaitable[None]],
        *,
        size: int,
        first_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._put = put
        self._sleep = sleep
        self._size = size
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._turns: deque[Turn] = deque()
        self._waiting = asyncio.Event()  # set while turns are held

    def __len__(self) -> int:
        return len(self._turns)

    def hold(self, turn: Turn) -> bool:
        """Keep `turn` for a later try; False when the buffer is full (the turn is not kept)."""
        if len(self._turns) >= self._size:
            return False
        self._turns.append(turn)
        self._waiting.set()
        return True

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RetryBuffer]:
        """The retrying task, for the life of the block: cancelled and awaited when it ends."""
        task = asyncio.create_task(self._retry(), name="discord-retry-buffer")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self._turns:
                log.warning("%s turns the inbox could not take are dropped at shutdown", len(self._turns))

    async def _retry(self) -> None:
        delay = self._first_delay
        while True:
            await self._waiting.wait()
            await self._sleep(delay)  # the turn at the head was refused just now
            while self._turns:
                turn = self._turns[0]
                try:
                    await self._put(turn)
                except InboxUnavailable:
                    delay = min(delay * 2, self._max_delay)
                    break
                except Exception:
                    self._turns.popleft()
                    log.exception("a held turn could not be put into the inbox; dropped", extra=turn_fields(turn))
                else:
                    self._turns.popleft()
                    log.info("held turn taken by the inbox (%s still held)", len(self._turns), extra=turn_fields(turn))
            else:
                delay = self._first_delay
                self._waiting.clear()
