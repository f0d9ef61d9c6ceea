"""Rate limits for the web chat: how many messages a visitor, and an IP address, may send a minute.

A sliding window log: a key may be hit `limit` times in any `window` seconds. A fixed
window (INCR + EXPIRE per minute) is one command cheaper but lets through twice the
limit across a window boundary, and makes "the third message is refused" depend on
when in the minute it was sent. The log holds at most `limit` timestamps per key, so
memory is bounded by the limits themselves.

`RedisRateLimiter` keeps the logs in Redis (one Lua script per hit, atomic), so every
replica behind a load balancer counts against one limit; `MemoryRateLimiter` is its
in-process twin for a bot without Redis.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.errors import StoreUnavailable

WINDOW = 60.0  # seconds: the settings say "per minute"


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int) -> float | None:
        """Count one event for `key`: None if it is within `limit` per window (and counted),
        else the seconds until it would be (and not counted)."""
        ...


# KEYS[1]: the key's log (a sorted set of hit times). ARGV: now (ms), window (ms), limit, member.
# Returns -1 when the hit is counted, else the milliseconds until the oldest hit leaves the window.
_SLIDING_LOG = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return -1
"""


class RedisRateLimiter:
    """The limits shared by every replica. `clock` is wall time (replicas must agree on it, as
    NTP makes them); injectable for tests."""

    def __init__(
        self, redis: Redis, *, prefix: str, window: float = WINDOW, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._window_ms = int(window * 1000)
        self._clock = clock
        self._script = redis.register_script(_SLIDING_LOG)

    def key(self, key: str) -> str:
        return f"{self._prefix}:rate:{{{key}}}"

    async def hit(self, key: str, limit: int) -> float | None:
        now_ms = int(self._clock() * 1000)
        member = f"{now_ms}:{secrets.token_hex(4)}"  # two hits in one millisecond are two hits
        try:
            wait_ms = await self._script(keys=[self.key(key)], args=[now_ms, self._window_ms, limit, member])
        except RedisError as exc:
            raise StoreUnavailable(f"rate limit check failed: {exc}") from exc
        return None if int(wait_ms) < 0 else int(wait_ms) / 1000


class MemoryRateLimiter:
    """The same limits in this process only. Idle keys are swept now and then, so the table
    holds only keys hit within the last window."""

    def __init__(self, *, window: float = WINDOW, clock: Callable[[], float] = time.monotonic, sweep_every: int = 1000) -> None:
        self._window = window
        self._clock = clock
        self._logs: dict[str, deque[float]] = {}
        self._sweep_every = sweep_every
        self._hits = 0

    def __len__(self) -> int:
        return len(self._logs)

    async def hit(self, key: str, limit: int) -> float | None:
        now = self._clock()
        self._hits += 1
        if self._hits % self._sweep_every == 0:
            self._sweep(now)
        log = self._logs.setdefault(key, deque())
        while log and log[0] <= now - self._window:
            log.popleft()
        if len(log) >= limit:
            return max(0.001, log[0] + self._window - now)
        log.append(now)
        return None

    def _sweep(self, now: float) -> None:
        for key in [k for k, log in self._logs.items() if not log or log[-1] <= now - self._window]:
            del self._logs[key]
