"""Redis commands issued at the same moment, sent in one round trip.

The turns of one engine batch end together, and the next turns of their conversations
start together: each turn's dedupe claim and context load, then each turn's save, were a
round trip of their own on a pooled connection of their own, all queued for the same
core. Here every command issued during one pass of the event loop goes out in one
pipeline on one connection (as ioredis's auto-pipelining does): one write, one read, one
wake-up for all of them. A command issued alone waits for nothing but that pass.
Scripts go as EVAL with their text: Redis keeps a script compiled under its hash either
way, and a round trip then never has to retry one that Redis did not know (NOSCRIPT).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

Command = tuple[Any, ...]  # a command's name and arguments, as `execute_command` takes them


class RedisBatcher:
    """Owned by whoever owns the Redis client (the runtime closes it before the client)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queued: list[tuple[tuple[Command, ...], asyncio.Future[list[Any]]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def execute(self, *commands: Command) -> list[Any]:
        """The replies to `commands`, in order, sent with whatever else is issued now. A command
        that fails raises its error here (a `RedisError`, as redis-py raises it) and fails
        only its caller; a lost connection fails every caller of that round trip."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((commands, future))
        if len(self._queued) == 1:
            loop.call_soon(self._send_queued)  # after every task that is ready now has run
        replies = await future
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        task = asyncio.create_task(self._send(queued))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, queued: list[tuple[tuple[Command, ...], asyncio.Future[list[Any]]]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for commands, _ in queued:
                    for command in commands:
                        pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every caller of this round trip hears it
            for _, future in queued:
                if not future.done():  # a caller cancelled meanwhile has its answer already
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is closing): so are its callers
            for _, future in queued:
                future.cancel()
            raise
        start = 0
        for commands, future in queued:
            if not future.done():
                future.set_result(replies[start : start + len(commands)])
            start += len(commands)

    async def aclose(self) -> None:
        """Wait for round trips under way: their callers get their replies or errors."""
        await asyncio.gather(*self._sending, return_exceptions=True)
