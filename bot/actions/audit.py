"""Every action call on record: who asked, in which tenant and conversation, which action with
which arguments (personal data redacted), the outcome and how long it took.

The record is a Redis stream (`{prefix}:actions:audit`), trimmed to `PARLEY_ACTIONS_AUDIT_DAYS`
as it is written, and a log line; the counts go to Prometheus and, per tenant and day, to the
figures of `parley report`. Writing the record never fails
a turn: a Redis outage is logged and the call's outcome stands.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.moderation.pii import redact_pii
from bot.ops.logs import turn_fields
from bot.ops.metrics import Metrics
from bot.ops.stats import Stats
from bot.store.redis import as_text
from bot.turns import Turn

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    turn: Turn
    action: str
    mode: str
    arguments: dict[str, Any]
    outcome: str  # ok | pending | confirmed | cancelled | expired | invalid | refused | timeout | status | ...
    seconds: float = 0.0
    detail: str = ""


def redacted(arguments: dict[str, Any]) -> str:
    """The arguments as JSON with e-mails, phone, card and IBAN numbers removed."""
    return redact_pii(json.dumps(arguments, ensure_ascii=False, sort_keys=True))


# Outcomes that are no call (yet): a write waiting for its yes, and one the user cancelled.
NOT_RUN = frozenset({"pending", "cancelled"})


class Audit:
    """`stats` (when given) counts the calls per tenant and day for `parley report`."""

    def __init__(
        self, redis: Redis | None, *, prefix: str, days: int, metrics: Metrics, stats: Stats | None = None
    ) -> None:
        self._redis, self._key, self._days, self._metrics = redis, f"{prefix}:actions:audit", days, metrics
        self._stats = stats

    async def record(self, entry: Entry) -> None:
        turn = entry.turn
        arguments = redacted(entry.arguments)
        self._metrics.action_calls.labels(entry.action, entry.outcome).inc()
        if entry.seconds:
            self._metrics.action_seconds.labels(entry.action).observe(entry.seconds)
        log.info(
            "action %s (%s) by %s: %s in %.0f ms %s",
            entry.action,
            entry.mode,
            turn.user,
            entry.outcome,
            entry.seconds * 1000,
            arguments,
            extra=turn_fields(turn),
        )
        if self._stats is not None and entry.outcome not in NOT_RUN:
            await self._stats.acted(turn, entry.outcome == "ok")
        if self._redis is None:
            return
        fields = {
            "tenant": turn.tenant,
            "platform": turn.platform,
            "conversation": str(turn.key),
            "user": turn.user,
            "action": entry.action,
            "mode": entry.mode,
            "arguments": arguments,
            "outcome": entry.outcome,
            "ms": f"{entry.seconds * 1000:.0f}",
            "detail": redact_pii(entry.detail)[:300],
        }
        oldest = int((time.time() - self._days * 86400) * 1000)
        try:
            await self._redis.xadd(self._key, fields, minid=oldest, approximate=True)  # type: ignore[arg-type]
        except RedisError as exc:
            log.warning("action audit not written (%s)", type(exc).__name__, extra=turn_fields(turn))

    async def read(self, count: int = 100) -> list[dict[str, str]]:
        """The latest entries, newest first (for `parley report` and the tests)."""
        if self._redis is None:
            return []
        rows = await self._redis.xrevrange(self._key, count=count) or []
        return [{as_text(k): as_text(v) for k, v in (fields or {}).items()} for _, fields in rows]
