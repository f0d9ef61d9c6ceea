"""`parley report`: per tenant and UTC day, how the bot did — answers, handoffs to people,
conversations that needed no person, 👍/👎, and the action calls that ran or failed — from the
counters in Redis (`bot.ops.stats`).

    tenant  day         answers  conversations  handoffs  without a person  👍  👎  actions  failed actions
    T0001   2025-03-02       41             12         2        10 (83.3%)   5   1        7               1

"Without a person" counts the day's conversations (with an answer or a handoff that day)
that were never handed to a person that day.

`--by user` and `--by channel` print the usage meter instead (`bot.ops.meter`): one line per
tenant, user (or channel) and UTC day, with the turns, the prompt and completion tokens the
engine counted, the seconds the turns took, and the turns refused over a quota:

    tenant  user  day         turns  prompt tokens  completion tokens  seconds  refused
    T0001   U042  2025-03-02     12          8,410              1,920     31.4        1
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import date

from bot.config import Settings
from bot.errors import ConfigError
from bot.ops.meter import RedisMeter, Usage
from bot.ops.stats import DayStats, RedisStats

COLUMNS = (
    *("tenant", "day", "answers", "conversations", "handoffs", "without a person"),
    *("👍", "👎", "actions", "failed actions"),
)


BY = ("tenant", "user", "channel")
USAGE_COLUMNS = ("day", "turns", "prompt tokens", "completion tokens", "seconds", "refused")


def _usage_row(row: Usage) -> list[str]:
    return [
        row.tenant,
        row.who,
        row.day,
        str(row.turns),
        f"{row.prompt:,}",
        f"{row.completion:,}",
        f"{row.seconds:.1f}",
        str(row.refused),
    ]


def render_usage(rows: Sequence[Usage], by: str) -> str:
    """A plain table, one line per tenant, user or channel, and day."""
    return _table(["tenant", by, *USAGE_COLUMNS], [_usage_row(r) for r in rows], left=3)


def _table(header: list[str], rows: list[list[str]], *, left: int) -> str:
    """Columns aligned: the first `left` to the left (names), the rest to the right (numbers)."""
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for r in table:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


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
        str(day.actions),
        str(day.action_failures),
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
    return _table(list(COLUMNS), rows, left=2)


async def run_report(
    settings: Settings,
    *,
    days: int,
    tenant: str | None,
    as_json: bool,
    by: str = "tenant",
    today: date | None = None,
    say: Callable[[str], None] = print,
    out: Callable[[str], None] = print,
) -> int:
    """Read the figures and print them; returns the number of rows printed (tenant-days, or
    tenant-user-days and tenant-channel-days with `by`)."""
    from bot.runtime import connect_redis

    if days < 1:
        raise ConfigError("--days", "must be at least 1")
    if by not in BY:
        raise ConfigError("--by", f"must be one of {', '.join(BY)}")
    redis = await connect_redis(settings, say)
    if redis is None:
        raise ConfigError(
            "PARLEY_REDIS_URL", "the figures are kept in Redis: set PARLEY_REDIS_URL or start a local Redis"
        )
    whom = f"tenant {tenant}" if tenant else "any tenant"
    try:
        if by == "tenant":
            stats = RedisStats(redis, prefix=settings.redis.prefix, conversation_ttl=settings.redis.context_ttl)
            found = await stats.days(days=days, tenant=tenant, today=today)
            rows, table = [d.to_dict() for d in found], render_table(found)
            nothing = f"no figures for {whom} in the last {days} day(s)"
        else:
            meter = RedisMeter(redis, prefix=settings.redis.prefix, days=settings.quota.meter_days)
            usage = await meter.rows(scope=by, days=days, tenant=tenant, today=today)
            rows, table = [u.to_dict() for u in usage], render_usage(usage, by)
            nothing = f"no usage for {whom} in the last {days} day(s)"
    finally:
        await redis.aclose()
    if as_json:
        out(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        out(table if rows else nothing)
    return len(rows)
