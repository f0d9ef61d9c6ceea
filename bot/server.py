"""Running adapters and dialogue workers together, and stopping them in order.

Shutdown order: stop intake (cancel the adapters' listeners), close the inbox,
let the workers finish the turns in flight within `drain_timeout`, close each
adapter that has an `aclose()` (the clients its sinks answer through), then the
runtime closes the shared clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from bot.inbox import MemoryInbox
from bot.ops import ops_server
from bot.adapter import Adapter
from bot.runtime import Runtime

log = logging.getLogger(__name__)


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
    inbox = MemoryInbox(runtime.settings.dialogue.inbox_size)
    runtime.metrics.live.queue_depth = inbox.__len__
    sinks = {adapter.platform: adapter for adapter in adapters}
    try:
        async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
            if ops:
                await stack.enter_async_context(ops_server(runtime, adapters, runtime.metrics))
            workers = tg.create_task(runtime.manager.serve(inbox, sinks), name="dialogue-workers")
            intake = [tg.create_task(a.run(inbox), name=f"adapter-{a.platform}") for a in adapters]
            stopper = tg.create_task(stop.wait(), name="stop-signal")
            await asyncio.wait([*intake, stopper], return_when=asyncio.FIRST_COMPLETED)
            log.info("shutting down: intake stopped, draining turns in flight")
            for task in (*intake, stopper):
                task.cancel()
            await inbox.close()
            try:
                async with asyncio.timeout(runtime.settings.dialogue.drain_timeout):
                    await asyncio.shield(workers)
            except TimeoutError:
                log.warning("turns still in flight after %.0f s; cancelling them", runtime.settings.dialogue.drain_timeout)
                workers.cancel()
                await asyncio.gather(workers, return_exceptions=True)
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
