"""Running adapters and dialogue workers together, and stopping them in order.

Shutdown order (SIGTERM or SIGINT): stop intake (cancel the adapters' listeners),
close the inbox (turns read but not started go back to the other workers), let the
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
from bot.inbox import MemoryInbox, RedisInbox
from bot.metrics import TimedInbox
from bot.ops import ops_server
from bot.runtime import Runtime, cancel_and_wait

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
        ttl=settings.redis.dedupe_ttl,
        # Long enough for the turn before to be answered, or taken over and answered.
        order_timeout=settings.dialogue.visibility_timeout * 2 + settings.llm.total_timeout,
        platforms=platforms,
        on_reclaim=runtime.metrics.reclaimed.inc,
    )


async def run_adapters(
    runtime: Runtime, adapters: Sequence[Adapter], *, stop: asyncio.Event | None = None, ops: bool = False
) -> None:
    """Run until `stop` is set, SIGTERM/SIGINT arrives, or an adapter's `run` returns.
    With `ops`, the /healthz, /readyz and /metrics endpoint runs alongside."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    inbox = make_inbox(runtime, [adapter.platform for adapter in adapters])
    runtime.metrics.live.queue_depth = inbox.__len__
    runtime.metrics.live.pending = lambda: inbox.pending
    intake = TimedInbox(inbox, runtime.metrics)
    sinks = {adapter.platform: adapter for adapter in adapters}
    try:
        async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
            if ops:
                await stack.enter_async_context(ops_server(runtime, adapters, runtime.metrics))
            upkeep = tg.create_task(inbox.maintain(), name="inbox-upkeep")
            workers = tg.create_task(runtime.manager.serve(inbox, sinks), name="dialogue-workers")
            listeners = [tg.create_task(a.run(intake), name=f"adapter-{a.platform}") for a in adapters]
            stopper = tg.create_task(stop.wait(), name="stop-signal")
            await asyncio.wait([*listeners, stopper], return_when=asyncio.FIRST_COMPLETED)
            log.info("shutting down: intake stopped, draining turns in flight")
            for task in (*listeners, stopper):
                task.cancel()
            await inbox.close()
            try:
                async with asyncio.timeout(runtime.settings.dialogue.drain_timeout):
                    await asyncio.shield(workers)
            except TimeoutError:
                log.warning("turns still in flight after %.0f s; cancelling them", runtime.settings.dialogue.drain_timeout)
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
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
