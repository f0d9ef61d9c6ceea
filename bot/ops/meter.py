"""The usage meter: per user, channel and tenant and UTC day, the turns, the prompt and completion
tokens the engine counted, the seconds the turns took, and the turns refused over a quota.
`parley report --by user|channel` reads it.

Layout in Redis (every key starts with the configured prefix):

    {prefix}:usage:tenants              set of tenants that have usage rows
    {prefix}:usage:{tenant}:{day}       hash: "{scope}:{id}:{figure}" -> count, where scope is
                                        user, channel or tenant (id "" for the tenant itself) and
                                        figure is turns, prompt, completion, ms or refused

One hash per tenant and day: a turn is five HINCRBYs into it (buffered, as `bot.ops.stats`
buffers its counts, and written together with the turns that ended beside it), and reading a day
is one HGETALL, never a SCAN. The hashes expire after `PARLEY_QUOTA_METER_DAYS` (35 by default:
a month's billing and a few days to spare; per-user rows are personal data, kept no longer
than needed), refreshed on every write.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from redis.asyncio import Redis

from bot.ops.stats import day_of, day_range
from bot.ops.writebehind import WriteBehind
from bot.store.redis import as_text, store_errors
from bot.turns import Turn

log = logging.getLogger(__name__)

SCOPES = ("user", "channel", "tenant")
FIGURES = ("turns", "prompt", "completion", "ms", "refused")


@dataclass(frozen=True, slots=True)
class Usage:
    """One row of the meter: what `who` (a user or channel id, "" for the whole tenant) used
    on one UTC day."""

    tenant: str
    scope: str
    who: str
    day: str
    turns: int = 0
    prompt: int = 0
    completion: int = 0
    ms: int = 0
    refused: int = 0  # turns refused over a quota (not counted in `turns`)

    @property
    def seconds(self) -> float:
        return self.ms / 1000

    def to_dict(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            **({self.scope: self.who} if self.scope != "tenant" else {}),
            "day": self.day,
            "turns": self.turns,
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "seconds": round(self.seconds, 3),
            "refused": self.refused,
        }


@dataclass(frozen=True, slots=True)
class Spent:
    """What one finished turn used."""

    prompt: int = 0
    completion: int = 0
    seconds: float = 0.0
    refused: bool = False

    def figures(self) -> dict[str, int]:
        if self.refused:
            return {"refused": 1}
        return {"turns": 1, "prompt": self.prompt, "completion": self.completion, "ms": round(self.seconds * 1000)}


def _fields(turn: Turn, spent: Spent) -> Iterable[tuple[str, int]]:
    for scope, who in (("user", turn.user), ("channel", turn.channel), ("tenant", "")):
        for figure, n in spent.figures().items():
            yield f"{scope}:{who}:{figure}", n


def _rows(tenant: str, day: str, scope: str, raw: dict[str, int]) -> list[Usage]:
    """A day's hash, as rows of one scope."""
    found: dict[str, dict[str, int]] = {}
    for name, n in raw.items():
        kind, _, rest = name.partition(":")
        who, _, figure = rest.rpartition(":")  # ids may hold ':', figures never do
        if kind == scope and figure in FIGURES:
            found.setdefault(who, {})[figure] = n
    return [Usage(tenant, scope, who, day, **figures) for who, figures in sorted(found.items())]


class Meter(Protocol):
    async def record(self, turn: Turn, spent: Spent) -> None:
        """Count a finished turn; never raises for a store failure (the figures are lost, not the turn)."""
        ...

    async def rows(self, *, scope: str, days: int, tenant: str | None = None, today: date | None = None) -> list[Usage]:
        """The last `days` UTC days up to `today`, one row per (tenant, `scope` id, day), oldest first."""
        ...


class RedisMeter:
    """Usage counted behind the turns (`WriteBehind`), one hash per tenant and day."""

    def __init__(self, redis: Redis, *, prefix: str, days: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = days * 24 * 3600
        self._counts: WriteBehind[tuple[str, str, str, int]] = WriteBehind(self._write, what="usage meter")

    def _key(self, tenant: str, day: str) -> str:
        return f"{self._prefix}:usage:{tenant}:{day}"

    async def record(self, turn: Turn, spent: Spent) -> None:
        day = day_of()
        for name, n in _fields(turn, spent):
            self._counts.add((turn.tenant, day, name, n))

    async def flush(self) -> None:
        await self._counts.flush()

    async def aclose(self) -> None:
        await self._counts.aclose()

    async def _write(self, pending: list[tuple[str, str, str, int]]) -> None:
        """(tenant, day, field, n) counts, summed, in one pipeline."""
        counts: Counter[tuple[str, str, str]] = Counter()
        for tenant, day, name, n in pending:
            counts[tenant, day, name] += n
        with store_errors(f"usage update failed ({len(pending)} counts lost)"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(f"{self._prefix}:usage:tenants", *{tenant for tenant, _, _ in counts})
                for (tenant, day, name), n in counts.items():
                    pipe.hincrby(self._key(tenant, day), name, n)
                for key in {self._key(tenant, day) for tenant, day, _ in counts}:
                    pipe.expire(key, self._ttl)
                await pipe.execute()

    async def rows(self, *, scope: str, days: int, tenant: str | None = None, today: date | None = None) -> list[Usage]:
        await self.flush()
        with store_errors("reading usage failed"):
            if tenant is not None:
                tenants = [tenant]
            else:
                tenants = sorted(as_text(t) for t in await self._redis.smembers(f"{self._prefix}:usage:tenants"))
            keys = [(t, d) for t in tenants for d in day_range(days, today)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for t, d in keys:
                    pipe.hgetall(self._key(t, d))
                raw = await pipe.execute()
        out: list[Usage] = []
        for (t, d), fields in zip(keys, raw, strict=True):
            out += _rows(t, d, scope, {as_text(k): int(v) for k, v in fields.items()})
        return out


class MemoryMeter:
    """The same in process memory, for `parley chat` without Redis. Bounded by `MAX` counts."""

    MAX = 100_000

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()

    async def record(self, turn: Turn, spent: Spent) -> None:
        day = day_of()
        for name, n in _fields(turn, spent):
            if len(self._counts) < self.MAX or (turn.tenant, day, name) in self._counts:
                self._counts[turn.tenant, day, name] += n

    async def rows(self, *, scope: str, days: int, tenant: str | None = None, today: date | None = None) -> list[Usage]:
        out: list[Usage] = []
        tenants = sorted({t for t, _, _ in self._counts} if tenant is None else {tenant})
        for t in tenants:
            for d in day_range(days, today):
                raw = {name: n for (t2, d2, name), n in self._counts.items() if (t2, d2) == (t, d)}
                out += _rows(t, d, scope, raw)
        return out
