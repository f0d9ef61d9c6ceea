"""Fair shares of the engine: the requests waiting for one of `PARLEY_LLM_MAX_CONCURRENCY`
slots are served round-robin across their owners (a user, or a tenant), not first come first
served.

Why: when the engine is saturated, a plain semaphore hands the next free slot to whoever asked
first, so one user who sends twenty questions at once (a script, a busy integration, a person
in twenty threads) puts every other user's question behind all twenty. Here each owner with
requests waiting gets the next slot in turn: a light user waits for at most one release per
heavy owner ahead of them in the rotation, however much the heavy ones have queued. An owner's
own requests keep their order. Nothing changes while slots are free.

The fairness is per process (each replica has its own slots); the key is chosen by
`PARLEY_LLM_FAIR_SHARE` (`user`, `tenant`, or `none` for first come first served).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

_ANYONE = ""  # the share of requests that name no owner (start-up probes, evaluations)


class FairSlots:
    """At most `limit` holders at once; waiters are woken round-robin across their shares."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        # Owners with requests waiting, in the order they get the next slot; each owner's
        # waiters in arrival order. An owner leaves the rotation when its last waiter does.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def locked(self) -> bool:
        """True when a request made now would wait."""
        return self._free == 0 or bool(self._waiting)

    def waiting(self) -> int:
        """Requests waiting for a slot (metrics, tests)."""
        return sum(len(q) for q in self._waiting.values())

    @asynccontextmanager
    async def hold(self, share: str | None) -> AsyncIterator[None]:
        await self._acquire(share or _ANYONE)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, share: str) -> None:
        if not self.locked():
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(share, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted a slot as it was cancelled: pass it on
            else:
                self._forget(share, waiter)
            raise

    def _forget(self, share: str, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(share)
        if queue is not None and waiter in queue:  # else a release has passed it over already
            queue.remove(waiter)
            if not queue:
                del self._waiting[share]

    def _release(self) -> None:
        """A slot goes straight to the first waiter of the next share in the rotation, which
        then goes to the back of it; with nobody waiting, it is free."""
        while self._waiting:
            share, queue = self._waiting.popitem(last=False)
            waiter = queue.popleft()
            if queue:
                self._waiting[share] = queue  # back of the rotation
            # A waiter cancelled a moment ago, whose task has not run yet, is passed over.
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
