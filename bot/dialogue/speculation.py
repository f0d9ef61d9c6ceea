"""Speculation: the plain-chat answer starts beside routing.

Routing's own work (an embedding, maybe a constrained choice) then overlaps the engine's
prefill instead of coming before it. The speculative answer is kept when routing ends in an
answer plain chat would give anyway, and dropped (its engine request aborted) otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing, suppress
from dataclasses import replace

from bot.config import RoutingSettings
from bot.handlers import ChatAlike, Handler, Request

HEAD_START = 0.05  # seconds routing waits at most for a speculative request to leave first
MAX_TRACKED_TENANTS = 10_000  # tenants whose share of chat-like turns steers speculation


class Ahead:
    """A handler's stream running ahead in a task of its own, its deltas kept until they are
    read. The whole generator lives in that one task (its engine request and its cleanup),
    so dropping it is cancelling the task, which closes the request: vLLM aborts it."""

    _DONE = object()

    def __init__(self, deltas: AsyncGenerator[str, None], sent: asyncio.Event) -> None:
        self.started = time.perf_counter()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.sent = sent  # set when the engine request has left (its `CallScope.sent`)
        self._task = asyncio.create_task(self._pump(deltas))

    async def _pump(self, deltas: AsyncGenerator[str, None]) -> None:
        try:
            async with aclosing(deltas):
                async for delta in deltas:
                    self._queue.put_nowait(delta)
        except Exception as exc:  # handed to the reader, where the turn's error handling is
            self._queue.put_nowait(exc)
        finally:
            self.sent.set()  # also when it ended before sending anything
            self._queue.put_nowait(self._DONE)

    async def head_start(self) -> None:
        """Wait (briefly) until the request has left: routing's CPU work (an embedding) then
        runs while the engine already prefills, instead of delaying the request it competes
        with for the event loop and the CPU."""
        with suppress(TimeoutError):
            async with asyncio.timeout(HEAD_START):
                await self.sent.wait()

    async def deltas(self) -> AsyncGenerator[str, None]:
        try:
            while (item := await self._queue.get()) is not self._DONE:
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]  # the queue holds deltas, one exception and _DONE
        finally:
            await self.drop()  # the reader stopped early (a platform error): stop the engine too

    async def drop(self) -> None:
        if self._task.done():
            return  # read to its end: nothing to stop, and no loop round to wait for
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class Speculation:
    """When to start a speculative chat answer, and whether to keep it. Per tenant, only while
    most of its turns end up answered as chat: a support tenant whose turns mostly go to its
    knowledge base does not pay for requests that are started only to be dropped."""

    def __init__(self, settings: RoutingSettings, handlers: Mapping[str, Handler]) -> None:
        self._on = settings.speculate
        self._handlers = handlers
        self._chat_share: dict[str, float] = {}  # per tenant: recent share of turns answered as chat

    def start(self, request: Request) -> Ahead | None:
        """The chat answer to `request` (routed "speculative"), started now, or None when it
        would probably be dropped."""
        turn = request.turn
        if (
            not self._on
            or "chat" not in self._handlers
            or "chat" not in request.tenant.handlers
            or turn.command is not None  # an explicit command names its handler
            or self._chat_share.get(turn.tenant, 1.0) < 0.5
        ):
            return None
        sent = asyncio.Event()
        return Ahead(self._handlers["chat"].answer(replace(request, scope=replace(request.scope, sent=sent))), sent)

    async def answers_as_chat(self, request: Request) -> bool:
        """Whether the routed handler answers this turn exactly as plain chat would."""
        intent = request.route.intent
        handler = self._handlers.get(intent)
        return intent == "chat" or (isinstance(handler, ChatAlike) and await handler.answers_as_chat(request))

    async def keep(self, request: Request) -> bool:
        """Whether a speculative chat answer is this turn's answer; tracked per tenant for `start`."""
        if not self._on:
            return False
        keep = await self.answers_as_chat(request)
        tenant = request.turn.tenant
        if tenant in self._chat_share or len(self._chat_share) < MAX_TRACKED_TENANTS:
            self._chat_share[tenant] = 0.9 * self._chat_share.get(tenant, 1.0) + 0.1 * keep
        return keep
