"""`parley report`: per tenant and UTC day, how the bot did — answers, handoffs to people,
conversations that needed no person, and 👍/👎 — from the counters in Redis (`bot.ops.stats`).

    tenant  day         answers  conversations  handoffs  without a person  👍  👎
    T0001   2025-03-02       41             12         2        10 (83.3%)   5   1

"Without a person" counts the day's conversations (with an answer or a handoff that day)
that were never handed to a person that day.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import date

from bot.config import Settings
from bot.errors import ConfigError
from bot.ops.stats import DayStats, RedisStats

COLUMNS = ("tenant", "day", "answers", "conversations", "handoffs", "without a person", "👍", "👎")


def _row(day: DayStats) -> list[str]:
    share = day.without_human_share
    without = f"{day.without_human} ({share * 100:.1f}%)" if share is not None else "-"
    return [
        day.tenant,
        day.day,
        str(day.answers),
        str(day.conversations),
        str(day.handoffs),
        without,
        str(day.up),
        str(day.down),
    ]


def render_table(days: Sequence[DayStats]) -> str:
    """A plain table, one line per tenant and day, and a total line per tenant over the period."""
    rows = [_row(d) for d in days]
    tenants = sorted({d.tenant for d in days})
    counted = [f.name for f in fields(DayStats)][2:]  # after tenant and day
    for tenant in tenants:
        mine = [d for d in days if d.tenant == tenant]
        if len(mine) > 1:
            rows.append(_row(DayStats(tenant, "total", **{f: sum(getattr(d, f) for d in mine) for f in counted})))
    table = [list(COLUMNS), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = []
    for r in table:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [
            c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


async def run_report(
    settings: Settings,
    *,
    days: int,
    tenant: str | None,
    as_json: bool,
    today: date | None = None,
    say: Callable[[str], None] = print,
    out: Callable[[str], None] = print,
) -> int:
    """Read the figures and print them; returns the number of tenant-days printed."""
    from bot.runtime import connect_redis

    if days < 1:
        raise ConfigError("--days", "must be at least 1")
    redis = await connect_redis(settings, say)
    if redis is None:
        raise ConfigError(
            "PARLEY_REDIS_URL", "the figures are kept in Redis: set PARLEY_REDIS_URL or start a local Redis"
        )
    try:
        stats = RedisStats(redis, prefix=settings.redis.prefix, conversation_ttl=settings.redis.context_ttl)
        found = await stats.days(days=days, tenant=tenant, today=today)
    finally:
        await redis.aclose()
    if as_json:
        out(json.dumps([d.to_dict() for d in found], ensure_ascii=False, indent=2))
    elif not found:
        out(f"no figures for {'tenant ' + tenant if tenant else 'any tenant'} in the last {days} day(s)")
    else:
        out(render_table(found))
    return len(found)
