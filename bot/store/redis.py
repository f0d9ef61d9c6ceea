"""What every user of Redis shares: its errors as ours, its replies as text, and a cancel
that survives redis-py's timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from bot.errors import StoreUnavailable


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Raise a Redis failure inside the block as `StoreUnavailable` ("`what`: the cause"), the
    error the dialogue manager knows how to wait out; anything else passes unchanged."""
    try:
        yield
    except RedisError as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (clients made with or without `decode_responses`)."""
    return value.decode() if isinstance(value, bytes) else value


async def cancel_and_wait(task: asyncio.Task[object], *, poll: float = 0.1) -> None:
    """Cancel `task` and wait until it has ended, cancelling again while it goes on. On
    Python 3.11 `asyncio.wait_for`, which redis-py wraps around every command it sends,
    swallows a cancellation that arrives just as the command completes (fixed in 3.12)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=poll)
