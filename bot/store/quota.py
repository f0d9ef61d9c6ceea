"""Token buckets shared by replicas: one Lua script over Redis, timed by the Redis server's clock.

A bucket holds up to `capacity` units (tokens or turns) and fills at `capacity / window` units a
second, so an idle user has a full bucket again one window after they stopped. `take` checks every
bucket a turn is under (its user's, its channel's, its tenant's) and takes the turn's cost from
all of them, or from none; `settle` adds or takes back the difference once a turn's real cost is
known, without a check (a bucket may go below zero: that debt is what keeps a turn that spent more
than was left from being followed by another until the bucket has refilled).

Layout in Redis (every key starts with the configured prefix):

    {prefix}:quota:{tenant}:{scope}:{id}:{rate}   hash: level (units, may be negative), at (server ms)

`{tenant}` is a Redis Cluster hash tag: all the buckets one script touches are in one slot. A
bucket expires once it would be full again (a missing bucket reads as full), so the keys are
bounded by the users active within a window, not by all users ever seen.

The script reads the time with `redis.call('TIME')`: replicas whose clocks disagree (or jump)
share buckets correctly, since only the server's clock is ever read. A restart of a Redis without
persistence forgets every bucket: they all read as full again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from bot.store.redis import as_text, store_errors

# KEYS: one bucket each. ARGV[1]: "take" (check every bucket, then take from all or none) or
# "settle" (no check); then four values per bucket: capacity, window (ms), cost, need (the level
# a bucket must hold for "take" to go ahead). Returns {0, ""} when taken, else {i, wait}: the
# 1-based bucket that refused (the one that stays short longest) and the seconds until it holds
# `need` again (a string: Lua numbers would be cut to integers on the way back).
_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local levels = {}
local worst, wait = 0, 0
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 4
  local cap, win = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local need = tonumber(ARGV[base + 4])
  local saved = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level, at = tonumber(saved[1]), tonumber(saved[2])
  if level == nil or at == nil then
    level, at = cap, now
  end
  level = math.min(cap, level + math.max(0, now - at) * cap / win)
  levels[i] = level
  if ARGV[1] == 'take' and level < need then
    local short = (need - level) * win / cap / 1000
    if short > wait then
      worst, wait = i, short
    end
  end
end
if worst > 0 then
  return {worst, tostring(wait)}
end
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 4
  local cap, win = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local level = math.min(cap, levels[i] - tonumber(ARGV[base + 3]))
  redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) * win / cap) + 1000)
end
return {0, ''}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """One quota: `capacity` units of `unit` ("tokens" or "turns") per `window` seconds, for
    each user, channel or tenant (`scope`). `name` is its setting's name (`user_tokens_per_hour`)."""

    scope: str
    unit: str
    capacity: int
    window: float
    name: str

    @property
    def per(self) -> str:
        return self.name.rpartition("_per_")[2]


@dataclass(frozen=True, slots=True)
class Bucket:
    """A limit applied to one user, channel or tenant: `key` names its state in Redis."""

    key: str
    limit: Limit


@dataclass(frozen=True, slots=True)
class Refusal:
    """The bucket that refused a turn and the seconds until it would let one through."""

    limit: Limit
    retry_after: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a let-through turn took from its token buckets: `tokens` from each of `buckets`,
    settled to the turn's real usage once it has ended."""

    buckets: tuple[Bucket, ...]
    tokens: int


class Buckets(Protocol):
    def bucket(self, tenant: str, scope: str, who: str, limit: Limit) -> Bucket: ...

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[float], needs: Sequence[float]) -> Refusal | None:
        """Take `costs[i]` from every bucket if each holds at least `needs[i]`; else take nothing
        and say which bucket refused. Raises `StoreUnavailable` when Redis fails."""
        ...

    async def settle(self, buckets: Sequence[Bucket], costs: Sequence[float]) -> None:
        """Take `costs[i]` (a negative cost gives back) from each bucket, unchecked."""
        ...


def _tag(tenant: str) -> str:
    return "{" + tenant.replace("{", "(").replace("}", ")") + "}"


class RedisBuckets:
    """The buckets in Redis, shared by every replica; one round trip per `take` or `settle`."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._prefix = prefix
        self._script = redis.register_script(_LUA)  # EVALSHA, loaded again after a restart (NOSCRIPT)

    def bucket(self, tenant: str, scope: str, who: str, limit: Limit) -> Bucket:
        rate = limit.name.partition("_")[2]  # tokens_per_hour
        return Bucket(f"{self._prefix}:quota:{_tag(tenant)}:{scope}:{who}:{rate}", limit)

    async def _run(self, mode: str, buckets: Sequence[Bucket], costs: Sequence[float], needs: Sequence[float]) -> list:
        args: list[str | float] = [mode]
        for b, cost, need in zip(buckets, costs, needs, strict=True):
            args += [b.limit.capacity, int(b.limit.window * 1000), cost, need]
        with store_errors("quota check failed"):
            return list(await self._script(keys=[b.key for b in buckets], args=args))

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[float], needs: Sequence[float]) -> Refusal | None:
        if not buckets:
            return None
        refused, wait = await self._run("take", buckets, costs, needs)
        if not refused:
            return None
        return Refusal(buckets[int(refused) - 1].limit, float(as_text(wait)))

    async def settle(self, buckets: Sequence[Bucket], costs: Sequence[float]) -> None:
        if buckets:
            await self._run("settle", buckets, costs, [0.0] * len(buckets))


class MemoryBuckets:
    """The same buckets in process memory, for `parley chat` without Redis (one process, so its
    own monotonic clock is the only one). Bounded: past `MAX` buckets the least recently used go."""

    MAX = 100_000

    def __init__(self) -> None:
        self._levels: dict[str, tuple[float, float]] = {}  # key -> (level, at)

    def bucket(self, tenant: str, scope: str, who: str, limit: Limit) -> Bucket:
        return Bucket(f"{tenant}\0{scope}\0{who}\0{limit.name}", limit)

    def _level(self, b: Bucket, now: float) -> float:
        level, at = self._levels.get(b.key, (float(b.limit.capacity), now))
        return min(b.limit.capacity, level + (now - at) * b.limit.capacity / b.limit.window)

    def _put(self, buckets: Sequence[Bucket], costs: Sequence[float], now: float) -> None:
        for b, cost in zip(buckets, costs, strict=True):
            level = min(b.limit.capacity, self._level(b, now) - cost)
            self._levels.pop(b.key, None)  # to the end: the oldest entries are the first dropped
            self._levels[b.key] = (level, now)
        while len(self._levels) > self.MAX:  # a dropped bucket reads as full
            del self._levels[next(iter(self._levels))]

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[float], needs: Sequence[float]) -> Refusal | None:
        now = time.monotonic()
        waits = [
            ((need - level) * b.limit.window / b.limit.capacity, b)
            for b, need in zip(buckets, needs, strict=True)
            if (level := self._level(b, now)) < need
        ]
        if waits:
            wait, b = max(waits, key=lambda w: w[0])
            return Refusal(b.limit, wait)
        self._put(buckets, costs, now)
        return None

    async def settle(self, buckets: Sequence[Bucket], costs: Sequence[float]) -> None:
        self._put(buckets, costs, time.monotonic())
