"""Which engine a request goes to: one circuit breaker per engine, and with several engines
each conversation sticks to one (rendezvous hashing on its key), so that engine's prefix cache
keeps serving its history; it moves to the next engine in its order only while its own is down.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.errors import EngineUnavailable

log = logging.getLogger(__name__)


class CircuitBreaker:
    """Keeps requests off an engine that is down, and lets one probe find out when it is back.

    Closed: requests flow. After `threshold` consecutive failures it opens: the engine is
    skipped (or, with no other engine, the turn fails at once) for `cooldown` seconds.
    Then it is half-open: the next request first probes the engine's /health; healthy
    closes the breaker, anything else opens it for another cooldown.
    """

    def __init__(self, *, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._cooldown else "open"

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._threshold or self._opened_at is not None:
            self._opened_at = self._clock()


@dataclass(slots=True)
class Engine:
    base_url: str  # ends in /v1
    breaker: CircuitBreaker

    @property
    def root_url(self) -> str:
        # /tokenize, /health and /metrics live at the server root, beside /v1.
        return self.base_url.removesuffix("/v1")


class Engines:
    """The engines of one client, in order of preference per request. `probe` asks an engine's
    /health (the client's, over its HTTP session) when a breaker is half-open."""

    def __init__(self, engines: Sequence[Engine], *, probe: Callable[[Engine], Awaitable[bool]]) -> None:
        self.engines = list(engines)
        self._probe = probe
        self._turn = 0  # round-robin position for requests without affinity

    def order(self, affinity: str | None, *, rotate: bool = False) -> list[Engine]:
        """Engines in order of preference. Without affinity: the same order for side
        requests (token counts, choices), the next one in turn for each generation."""
        if len(self.engines) == 1:
            return list(self.engines)
        if affinity is None:
            if rotate:
                self._turn = (self._turn + 1) % len(self.engines)
            return self.engines[self._turn :] + self.engines[: self._turn]

        # Rendezvous hashing: adding or removing an engine moves only the conversations
        # that must move, and each conversation has a stable order of fallbacks.
        def weight(engine: Engine) -> bytes:
            return hashlib.blake2b(f"{affinity}|{engine.base_url}".encode(), digest_size=8).digest()

        return sorted(self.engines, key=weight, reverse=True)

    async def candidates(self, affinity: str | None, *, rotate: bool = False) -> list[Engine]:
        """The engines to try, best first, without those whose breaker is open."""
        usable = []
        for engine in self.order(affinity, rotate=rotate):
            state = engine.breaker.state
            if state == "half_open":
                if await self._probe(engine):
                    log.info("engine %s is back; circuit closed", engine.base_url)
                    engine.breaker.success()
                    state = "closed"
                else:
                    engine.breaker.failure()
            if state == "closed":
                usable.append(engine)
        if not usable:
            raise EngineUnavailable("every engine is down (circuit open)", url=self.engines[0].base_url)
        return usable

    def circuits(self) -> dict[str, str]:
        return {engine.base_url: engine.breaker.state for engine in self.engines}
