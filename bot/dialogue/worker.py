"""The worker loop over an inbox: different conversations run concurrently (bounded by
`max_in_flight`), turns of one conversation strictly one after another in arrival order
(the manager's per-conversation lock, taken in the order the turns' tasks start)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from bot.errors import InboxClosed
from bot.ops.logs import turn_fields
from bot.reply import ReplySink, SinkFactory
from bot.store.inbox import Delivery, Inbox
from bot.turns import Outcome, Reply, Turn

log = logging.getLogger(__name__)

DEFER_PAUSE = (0.2, 5.0)  # first and longest pause before a deferred turn is tried again

Handle = Callable[[Turn, ReplySink], Awaitable[Reply]]


async def serve(inbox: Inbox, sinks: Mapping[str, SinkFactory], handle: Handle, *, max_in_flight: int) -> None:
    """Take turns from the inbox until it is closed, then finish those in flight."""
    slots = asyncio.Semaphore(max_in_flight)
    async with asyncio.TaskGroup() as turns:
        while True:
            # A slot first, then a turn: a busy worker leaves the inbox's turns to the others.
            await slots.acquire()
            try:
                delivery = await inbox.get()
            except InboxClosed:
                slots.release()
                break
            # Created in arrival order; each takes its conversation's lock first thing.
            turns.create_task(_serve_one(inbox, delivery, sinks, handle, slots))


async def _serve_one(
    inbox: Inbox, delivery: Delivery, sinks: Mapping[str, SinkFactory], handle: Handle, slots: asyncio.Semaphore
) -> None:
    try:
        await _answer(inbox, delivery, sinks, handle)
        await inbox.done(delivery)  # not reached when cancelled: the turn stays for another worker
    finally:
        slots.release()


async def _answer(inbox: Inbox, delivery: Delivery, sinks: Mapping[str, SinkFactory], handle: Handle) -> None:
    turn = delivery.turn
    try:
        factory = sinks.get(turn.platform)
        if factory is None:
            log.error("no adapter for platform %s; turn dropped", turn.platform, extra=turn_fields(turn))
        elif not await inbox.in_order(delivery):
            log.info("turn %s already finished by a worker that stopped", turn.seq, extra=turn_fields(turn))
        else:
            journal = inbox.journal(delivery)
            pause = DEFER_PAUSE[0]
            while (await handle(turn, factory.sink_for(turn, journal))).outcome is Outcome.DEFERRED:
                await asyncio.sleep(pause)
                pause = min(pause * 2, DEFER_PAUSE[1])
    except Exception:
        # An adapter that cannot even make a sink must not take the workers down.
        log.exception("no way to answer this turn; dropped", extra=turn_fields(turn))
