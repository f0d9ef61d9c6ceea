"""Turns the inbox could not take while Redis was unreachable, kept in memory and put again.

Discord, unlike Slack, never delivers a gateway event twice on request: a message the
inbox refuses is gone unless Parley keeps it. `RetryBuffer` keeps such turns, in
arrival order and up to a bound, and one task puts them again with backoff (0.2 s
doubling to 5 s) until the inbox takes them. While it holds any, new turns queue
behind them, so a conversation's messages still reach the inbox in order. At shutdown
(intake has stopped, the inbox is still open) the held turns get one more try; those it
still refuses are given up to a callback that tells their users, so none is lost in silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from bot.errors import InboxUnavailable
from bot.ops.logs import turn_fields
from bot.turns import Turn

log = logging.getLogger(__name__)


class RetryBuffer:
    """`put` is tried again for each held turn; it raises `InboxUnavailable` to mean "later".
    Any other failure of a held turn is logged and the turn dropped, so one bad turn never
    holds up the rest. `give_up` gets each turn still refused at shutdown."""

    def __init__(
        self,
        put: Callable[[Turn], Awaitable[None]],
        *,
        give_up: Callable[[Turn], Awaitable[None]],
        size: int,
        first_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._put = put
        self._give_up = give_up
        self._sleep = sleep
        self._size = size
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._turns: deque[Turn] = deque()
        self._waiting = asyncio.Event()  # set while turns are held
        self._closed = False  # after shutdown nothing more is held: it could never be put

    def __len__(self) -> int:
        return len(self._turns)

    def hold(self, turn: Turn) -> bool:
        """Keep `turn` for a later try; False when the buffer is full or shut (the turn is not kept)."""
        if self._closed or len(self._turns) >= self._size:
            return False
        self._turns.append(turn)
        self._waiting.set()
        return True

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RetryBuffer]:
        """The retrying task, for the life of the block: cancelled and awaited when it ends,
        then the last try (the block ends once intake has stopped, before the inbox closes)."""
        task = asyncio.create_task(self._retry(), name="discord-retry-buffer")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._closed = True
            await self._last_try()

    async def _last_try(self) -> None:
        """Each held turn in order, until the inbox refuses one; that one and the rest are given up."""
        while self._turns:
            turn = self._turns[0]
            try:
                await self._put(turn)
            except InboxUnavailable:
                break
            except Exception:
                log.exception("a held turn could not be put into the inbox; dropped", extra=turn_fields(turn))
            self._turns.popleft()
        if self._turns:
            log.warning("%s turns the inbox could not take are given up at shutdown", len(self._turns))
        while self._turns:
            turn = self._turns.popleft()
            try:
                await self._give_up(turn)
            except Exception:
                log.exception("a held turn could not be given up", extra=turn_fields(turn))

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
