"""Rate limits for the web chat: how many frames a visitor, and an IP address, may send a
minute, and how many conversations they may hand to people an hour.

A sliding window log: a key may be hit `limit` times in any `window` seconds. A fixed
window (INCR + EXPIRE per minute) is one command cheaper but lets through twice the
limit across a window boundary, and makes "the third message is refused" depend on
when in the minute it was sent. The log holds at most `limit` timestamps per key, so
memory is bounded by the limits themselves.

`RedisRateLimiter` keeps the logs in Redis (one Lua script per hit, atomic), so every
replica behind a load balancer counts against one limit; `MemoryRateLimiter` is its
in-process twin for a bot without Redis.

`HandoffCaps` is the web chat's `bot.handoff.desk.HandoffGate`: a new visitor is one reload
away, so without it anyone could open tickets in the support channel as fast as they type.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.errors import StoreUnavailable
from bot.ops.logs import turn_fields
from bot.turns import Turn

log = logging.getLogger(__name__)

WINDOW = 60.0  # seconds: the frame limits are "per minute"
HOUR = 3600.0  # the handoff caps are "per hour"
# Seconds a conversation's address is remembered after its last message: far longer than a
# turn waits in the inbox before the worker that may hand it off takes it.
ADDRESS_TTL = 24 * 3600
MAX_MEMORY_ADDRESSES = 100_000


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int) -> float | None:
        """Count one event for `key`: None if it is within `limit` per window (and counted),
        else the seconds until it would be (and not counted)."""
        ...

    async def hit_all(self, hits: Sequence[tuple[str, int]]) -> tuple[str, float] | None:
        """Count one event for every (key, limit) if each is within its limit: None. Else count
        none, and return the first key over its limit with the seconds until it would not be."""
        ...


# KEYS: the keys' logs (sorted sets of hit times). ARGV: now (ms), window (ms), member, then one
# limit per key. Returns 0 when the hit is counted for every key, else {the 1-based index of the
# first key over its limit, the milliseconds until its oldest hit leaves the window}.
_SLIDING_LOG = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return {i, math.max(1, tonumber(oldest[2]) + window - now)}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, window)
end
return 0
"""


class RedisRateLimiter:
    """The limits shared by every replica. `clock` is wall time (replicas must agree on it, as
    NTP makes them); injectable for tests. Each key is its own Redis Cluster hash tag, so the
    keys spread over the cluster; with `slot`, every key carries that tag instead, so that
    `hit_all` over several keys stays in one slot (for rare events, such as handoffs)."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        window: float = WINDOW,
        clock: Callable[[], float] = time.time,
        slot: str | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._window_ms = int(window * 1000)
        self._clock = clock
        self._slot = slot
        self._script = redis.register_script(_SLIDING_LOG)

    def key(self, key: str) -> str:
        if self._slot is not None:
            return f"{self._prefix}:rate:{{{self._slot}}}:{key}"
        return f"{self._prefix}:rate:{{{key}}}"

    async def hit(self, key: str, limit: int) -> float | None:
        refused = await self.hit_all([(key, limit)])
        return None if refused is None else refused[1]

    async def hit_all(self, hits: Sequence[tuple[str, int]]) -> tuple[str, float] | None:
        now_ms = int(self._clock() * 1000)
        member = f"{now_ms}:{secrets.token_hex(4)}"  # two hits in one millisecond are two hits
        keys = [self.key(key) for key, _ in hits]
        try:
            result = await self._script(
                keys=keys, args=[now_ms, self._window_ms, member, *(limit for _, limit in hits)]
            )
        except RedisError as exc:
            raise StoreUnavailable(f"rate limit check failed: {exc}") from exc
        if not isinstance(result, list):
            return None
        index, wait_ms = (int(x) for x in result)
        return hits[index - 1][0], wait_ms / 1000


class MemoryRateLimiter:
    """The same limits in this process only. Idle keys are swept now and then, so the table
    holds only keys hit within the last window."""

    def __init__(
        self, *, window: float = WINDOW, clock: Callable[[], float] = time.monotonic, sweep_every: int = 1000
    ) -> None:
        self._window = window
        self._clock = clock
        self._logs: dict[str, deque[float]] = {}
        self._sweep_every = sweep_every
        self._hits = 0

    def __len__(self) -> int:
        return len(self._logs)

    async def hit(self, key: str, limit: int) -> float | None:
        refused = await self.hit_all([(key, limit)])
        return None if refused is None else refused[1]

    async def hit_all(self, hits: Sequence[tuple[str, int]]) -> tuple[str, float] | None:
        now = self._clock()
        self._hits += 1
        if self._hits % self._sweep_every == 0:
            self._sweep(now)
        logs = []
        for key, limit in hits:
            log_ = self._logs.setdefault(key, deque())
            while log_ and log_[0] <= now - self._window:
                log_.popleft()
            if len(log_) >= limit:
                return key, max(0.001, log_[0] + self._window - now)
            logs.append(log_)
        for log_ in logs:
            log_.append(now)
        return None

    def _sweep(self, now: float) -> None:
        for key in [k for k, log_ in self._logs.items() if not log_ or log_[-1] <= now - self._window]:
            del self._logs[key]


# -- handoffs ---------------------------------------------------------------------------------


class Addresses(Protocol):
    """The address (as `normalize.client_address` gives it) each conversation last wrote from:
    a turn that hands off may be handled by another replica than the one holding the socket."""

    async def note(self, conversation: str, address: str) -> None: ...

    async def of(self, conversation: str) -> str | None: ...


class RedisAddresses:
    def __init__(self, redis: Redis, *, prefix: str, ttl: int = ADDRESS_TTL) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl

    def key(self, conversation: str) -> str:
        return f"{self._prefix}:address:{{{conversation}}}"

    async def note(self, conversation: str, address: str) -> None:
        try:
            await self._redis.set(self.key(conversation), address, ex=self._ttl)
        except RedisError as exc:
            raise StoreUnavailable(f"address note failed: {exc}") from exc

    async def of(self, conversation: str) -> str | None:
        try:
            raw = await self._redis.get(self.key(conversation))
        except RedisError as exc:
            raise StoreUnavailable(f"address look-up failed: {exc}") from exc
        return raw.decode() if isinstance(raw, bytes) else raw


class MemoryAddresses:
    """In this process, for the newest `size` conversations (a bot without Redis is one process)."""

    def __init__(self, *, size: int = MAX_MEMORY_ADDRESSES) -> None:
        self._table: OrderedDict[str, str] = OrderedDict()
        self._size = size

    async def note(self, conversation: str, address: str) -> None:
        self._table.pop(conversation, None)
        self._table[conversation] = address
        while len(self._table) > self._size:
            self._table.popitem(last=False)

    async def of(self, conversation: str) -> str | None:
        return self._table.get(conversation)


class HandoffCaps:
    """Handoffs per visitor (the conversation), per IP address and per site in any hour, all
    counted or none: a ticket refused by one cap uses up nothing of the others. `limiter` must
    have an hour's window."""

    def __init__(self, *, limiter: RateLimiter, addresses: Addresses, visitor: int, ip: int, site: int) -> None:
        self._limiter = limiter
        self._addresses = addresses
        self._caps = {"visitor": visitor, "ip": ip, "site": site}

    async def note(self, conversation: str, address: str) -> None:
        """Remember where a conversation's message came from, before it goes into the inbox."""
        await self._addresses.note(conversation, address)

    async def admit(self, turn: Turn, reason: str) -> bool:
        address = await self._addresses.of(turn.channel)
        hits = [(f"visitor:{turn.channel}", self._caps["visitor"]), (f"site:{turn.tenant}", self._caps["site"])]
        if address is not None:  # unknown only for a turn older than ADDRESS_TTL: the other caps hold
            hits.insert(1, (f"ip:{address}", self._caps["ip"]))
        refused = await self._limiter.hit_all(hits)
        if refused is None:
            return True
        key, wait = refused
        cap = self._caps[key.partition(":")[0]]
        log.warning(
            "web: handoff (%s) refused: %s is over its cap of %d an hour (a slot frees in %.0f s)",
            reason,
            key,
            cap,
            wait,
            extra=turn_fields(turn),
        )
        return False
