"""Running adapters and dialogue workers together, and stopping them in order.

Shutdown order (SIGTERM, SIGINT or SIGHUP): stop intake (cancel the adapters' listeners
and wait until each has returned), close the inbox (turns read but not started go back to the other workers), let the
workers finish the turns in flight within `drain_timeout`, hand what is still
unfinished back to the other replicas' workers, close each adapter that has an
`aclose()` (the clients its sinks answer through), then the runtime closes the
shared clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from bot.adapter import Adapter
from bot.errors import ConfigError
from bot.ops.endpoint import ops_server
from bot.ops.metrics import TimedInbox
from bot.runtime import Runtime
from bot.store.inbox import MemoryInbox, RedisInbox
from bot.store.redis import cancel_and_wait

log = logging.getLogger(__name__)


def make_inbox(runtime: Runtime, platforms: Sequence[str]) -> MemoryInbox | RedisInbox:
    """A Redis Stream inbox when Redis is configured (PARLEY_DIALOGUE_INBOX=auto) or asked for,
    else the in-process queue of the embedded default. Workers read the turns of `platforms`."""
    settings = runtime.settings
    choice = settings.dialogue.inbox
    if choice == "memory" or (choice == "auto" and not settings.redis.url):
        return MemoryInbox(settings.dialogue.inbox_size)
    if runtime.redis is None:
        raise ConfigError("PARLEY_DIALOGUE_INBOX", "the Redis inbox needs PARLEY_REDIS_URL")
    return RedisInbox(
        runtime.redis,
        settings.dialogue,
        prefix=settings.redis.prefix,
        # A conversation's counters live as long as its context: numbering that started again
        # while the context remembers the conversation cannot swallow a turn (turns are known by
        # their ids), but it would cost the order of the turns in flight.
        ttl=settings.redis.context_ttl,
        # Long enough for the turn before to be answered, or taken over and answered.
        order_timeout=settings.dialogue.visibility_timeout * 2 + settings.llm.total_timeout,
        platforms=platforms,
        on_reclaim=runtime.metrics.reclaimed.inc,
    )


async def run_adapters(
    runtime: Runtime, adapters: Sequence[Adapter], *, stop: asyncio.Event | None = None, ops: bool = False
) -> None:
    """Run until `stop` is set or an adapter's `run` returns; without `stop`, until SIGTERM,
    SIGINT or SIGHUP arrives (`parley serve` passes one that its own handlers set, see
    `bot/tools/cli.py`). With `ops`, the /healthz, /readyz and /metrics endpoint runs alongside."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if stop is None else ()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    inbox = make_inbox(runtime, [adapter.platform for adapter in adapters])
    runtime.metrics.live.queue_depth = inbox.__len__
    runtime.metrics.live.pending = lambda: inbox.pending
    intake = TimedInbox(inbox, runtime.metrics)
    sinks = {adapter.platform: adapter for adapter in adapters}
    running = list(adapters)  # what /readyz checks: an adapter that failed is reported, not awaited
    try:
        async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
            if ops:
                await stack.enter_async_context(ops_server(runtime.watched(), running))
            upkeep = tg.create_task(inbox.maintain(), name="inbox-upkeep")
            workers = tg.create_task(runtime.manager.serve(inbox, sinks), name="dialogue-workers")
            listeners = [
                tg.create_task(_listen(a, intake, runtime, running), name=f"adapter-{a.platform}") for a in adapters
            ]
            stopper = tg.create_task(stop.wait(), name="stop-signal")
            # Until a stop is asked for, an adapter returns (the console's /quit), or every adapter
            # has failed: one platform's failure leaves the others serving.
            waiting = {*listeners, stopper}
            while True:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done or not running or any(task.result() is None for task in done):
                    break
            log.info("shutting down: intake stopped, draining turns in flight")
            for task in (*listeners, stopper):
                task.cancel()
            # Intake has stopped only once each adapter's `run` has returned: a turn it takes on
            # its way out (an event already received, a turn held while Redis was down) must
            # still find the inbox open.
            await asyncio.wait([*listeners, stopper])
            await inbox.close()
            try:
                async with asyncio.timeout(runtime.settings.dialogue.drain_timeout):
                    await asyncio.shield(workers)
            except TimeoutError:
                log.warning(
                    "turns still in flight after %.0f s; cancelling them", runtime.settings.dialogue.drain_timeout
                )
                await cancel_and_wait(workers, poll=0.5)
            await inbox.release()
            await cancel_and_wait(upkeep)
            # Only now may adapters close the clients their sinks answer through.
            for adapter in adapters:
                if (aclose := getattr(adapter, "aclose", None)) is not None:
                    try:
                        await aclose()
                    except Exception:
                        log.exception("closing adapter %s failed", adapter.platform)
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    if adapters and not running:  # nothing was left serving: `parley serve` ends with the first adapter's error
        raise next(error for task in listeners if not task.cancelled() and (error := task.result()) is not None)


async def _listen(
    adapter: Adapter, intake: TimedInbox, runtime: Runtime, running: list[Adapter]
) -> BaseException | None:
    """Run one adapter; its failure is logged, reported in /readyz and returned, never raised:
    raised, it would end the task group and with it every other adapter and the workers."""
    try:
        await adapter.run(intake)
        return None
    except Exception as exc:
        log.error(
            "the %s adapter stopped: %s: %s; the other platforms keep serving",
            adapter.platform,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        runtime.degraded.report(f"{adapter.platform}:adapter", f"stopped: {type(exc).__name__}: {exc}")
        running.remove(adapter)
        return exc
