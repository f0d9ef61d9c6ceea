"""Figures written behind the turns: kept in memory, then written in one go `FLUSH_DELAY`
after the first, by the owner's `write`.

Turns that end together (under load they do: one engine batch) share one write, made once
their next turns' requests have left, instead of competing with them for the event loop at
the moment they end. Losing a buffer when Redis fails costs figures, never turns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from bot.errors import StoreUnavailable

log = logging.getLogger(__name__)

FLUSH_DELAY = 0.05  # seconds items are kept in memory before one write
MAX_PENDING = 10_000  # items kept while Redis fails; more are dropped with a warning

T = TypeVar("T")


class WriteBehind(Generic[T]):
    """`add` items; `write` gets them in one list. Readers call `flush` first; the owner calls
    `aclose` before Redis closes. `what` names the figures in log lines."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], *, what: str) -> None:
        self._write, self._what = write, what
        self._pending: list[T] = []
        self._writer: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # a reader that flushes waits for a write under way

    def add(self, item: T) -> None:
        if len(self._pending) >= MAX_PENDING:  # Redis has been failing for a while
            log.warning("%s buffer full: one is lost", self._what)
            return
        self._pending.append(item)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_later())

    async def _write_later(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        self._writer = None
        try:
            await self.flush()
        except StoreUnavailable as exc:
            log.warning("could not update the %s: %s", self._what, exc)

    async def flush(self) -> None:
        """Write what is buffered now; on failure it is lost (figures, not turns)."""
        async with self._writing:
            pending, self._pending = self._pending, []
            if pending:
                await self._write(pending)

    async def aclose(self) -> None:
        """Write what is buffered (the owner calls this before closing Redis)."""
        if self._writer is not None:
            await self._writer  # at most FLUSH_DELAY, and it never raises
        try:
            await self.flush()
        except StoreUnavailable as exc:
            log.warning("could not update the %s at shutdown: %s", self._what, exc)
