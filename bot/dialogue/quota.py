"""Quotas: per user, channel and tenant, tokens per hour and per day and turns per minute
(`PARLEY_QUOTA_*`, a tenant's `[tenants."ID".quota]` table overriding them), as token buckets
in Redis shared by every replica (`bot.store.quota`).

Before the turn, `QuotaGate` takes one turn from each turns-per-minute bucket and reserves the
turn's estimated tokens (its prompt as far as it is known, plus `PARLEY_LLM_MAX_TOKENS` for the
answer) from each token bucket, all in one atomic script; a token bucket refuses once it is empty
(below one token), whatever the estimate. After the turn, `QuotaCharge` settles each token bucket
to what the engine reported for the turn (prompt plus completion tokens of all its requests).
So a turn let through with a little left can spend more than was left, by at most the one turn,
and turns running at the same time on any replicas cannot all slip through on the same remainder:
each sees the others' reservations. (A turn that uses more than its estimate, an action turn
asking the engine several times, can stretch that by its excess; its debt is still repaid before
the bucket lets anyone through again.)

Over quota, the user gets one reply (`bot.messages.over_quota`: which limit, and when it lets a
message through again) and the turn ends as `Outcome.OVER_QUOTA`, before any engine request.

The gate sits after the stages that must never be refused (help and reset, desk events and
votes, a yes or no to a waiting action: the action was asked for while there was quota, and a
click must not be lost) and before the first stage that may ask the engine (input moderation's
LLM check, routing, the answer). A conversation handed to a person is not limited: its messages
go to people, not to the engine.

Redis failing during the check: the turn goes on (fail-open), with a warning in the log and
`parley_quota_unavailable_total` counted. Quotas protect the engine's capacity and the operator's
bill, not secrets: refusing every user for Redis's fault would be worse than a few unmetered
turns, and Redis being down already stops turns at their claim (they wait), so this is the
rare case of Redis failing between the claim and the gate.
"""

from __future__ import annotations

import logging

from bot import messages
from bot.config import RATES, QuotaSettings
from bot.dialogue.stages import TurnState
from bot.errors import StoreUnavailable
from bot.ops.logs import turn_fields
from bot.ops.metrics import Metrics
from bot.store.context import estimate_tokens
from bot.store.quota import Buckets, Limit, Refusal, Reservation
from bot.tenants import TenantConfig
from bot.turns import Outcome, Reply, Turn

log = logging.getLogger(__name__)


class Quotas:
    """Which buckets a turn is under, and taking and settling its cost."""

    def __init__(self, settings: QuotaSettings, buckets: Buckets, *, max_tokens: int, system_prompt: str) -> None:
        self._settings = settings
        self._buckets = buckets
        self._answer_tokens = max_tokens
        self._system_tokens = estimate_tokens(system_prompt)
        self._exempt = frozenset(settings.exempt_users)

    def limits(self, tenant: TenantConfig) -> list[Limit]:
        """The limits in force for a tenant's conversations: its own where it sets them."""
        found = []
        for name in QuotaSettings.LIMITS:
            own: int | None = getattr(tenant.quota, name)
            capacity = own if own is not None else getattr(self._settings, name)
            if capacity > 0:
                scope, _, rate = name.partition("_")
                found.append(Limit(scope, rate.partition("_")[0], capacity, RATES[rate], name))
        return found

    def exempt(self, turn: Turn) -> bool:
        return turn.user in self._exempt

    def estimate(self, state: TurnState) -> int:
        """The tokens a turn is expected to use: its prompt as far as it is known, and the longest answer."""
        own = estimate_tokens(state.tenant.system_prompt) if state.tenant.system_prompt else self._system_tokens
        history = state.context.tokens + (estimate_tokens(state.context.summary) if state.context.summary else 0)
        return own + history + estimate_tokens(state.turn.text) + self._answer_tokens

    async def admit(self, turn: Turn, tenant: TenantConfig, tokens: int) -> Reservation | Refusal:
        """Take one turn from the turn buckets and reserve `tokens` from the token buckets, or
        refuse (taking nothing). Raises `StoreUnavailable` when Redis fails."""
        who = {"user": turn.user, "channel": turn.channel, "tenant": turn.tenant}
        buckets = [
            self._buckets.bucket(turn.tenant, limit.scope, who[limit.scope], limit) for limit in self.limits(tenant)
        ]
        if not buckets:
            return Reservation((), 0)
        costs = [1.0 if b.limit.unit == "turns" else float(tokens) for b in buckets]
        refused = await self._buckets.take(buckets, costs, [1.0] * len(buckets))
        if refused is not None:
            return refused
        return Reservation(tuple(b for b in buckets if b.limit.unit == "tokens"), tokens)

    async def settle(self, reservation: Reservation, used: int) -> None:
        """Charge the token buckets what the turn used instead of what was reserved."""
        if reservation.buckets:
            await self._buckets.settle(
                reservation.buckets, [float(used - reservation.tokens)] * len(reservation.buckets)
            )


class QuotaGate:
    """The stage: refuse a turn over quota, before anything is sent to the engine."""

    def __init__(self, quotas: Quotas, metrics: Metrics) -> None:
        self._quotas, self._metrics = quotas, metrics

    async def __call__(self, state: TurnState) -> Reply | None:
        turn = state.turn
        if state.ticket is not None or self._quotas.exempt(turn):
            return None
        try:
            verdict = await self._quotas.admit(turn, state.tenant, self._quotas.estimate(state))
        except StoreUnavailable as exc:  # fail-open: see the module's docstring
            log.warning("quota check skipped, the turn goes on: %s", exc, extra=turn_fields(turn))
            self._metrics.quota_unavailable.inc()
            return None
        if isinstance(verdict, Reservation):
            state.quota = verdict
            return None
        limit = verdict.limit
        log.info(
            "over quota: %s (%d), again in %.0f s",
            limit.name,
            limit.capacity,
            verdict.retry_after,
            extra=turn_fields(turn),
        )
        text = messages.over_quota(limit.scope, limit.unit, limit.per, limit.capacity, verdict.retry_after)
        await state.sink.send(text)
        return state.reply(Outcome.OVER_QUOTA, text=text, error=limit.name)


class QuotaCharge:
    """The observer: settle a let-through turn's reservation to the tokens it really used."""

    def __init__(self, quotas: Quotas) -> None:
        self._quotas = quotas

    async def observe(self, state: TurnState, reply: Reply) -> None:
        if state.quota is not None:
            usage = state.llm.usage
            await self._quotas.settle(state.quota, usage.prompt_tokens + usage.completion_tokens)
