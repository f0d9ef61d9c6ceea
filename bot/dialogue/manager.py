"""The dialogue manager: runs one turn from its arrival to its saved answer.

A turn goes through the stages of `bot.dialogue.stages` in order, each of which may end it:

    profile → claim → regenerate → command → desk event → validate → confirm (a write
      action's yes or no) → quota → moderate in → handoff gate → route → answer

(the profile: the tenant's settings for the turn's channel, `bot.tenants`, `bot.profiles`;
regenerate: a question asked again in place of its answer, `bot.dialogue.regenerate`), and
then past the observers (settling the turn's quota to its real usage, the hand-off after
failed answers, the report's figures, the usage meter, metrics). Every turn ends in exactly one
logged `Outcome`; no error escapes without the user being told something. `serve` is the
worker loop over an inbox (`bot.dialogue.worker`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bot import messages
from bot.actions.confirm import PendingCalls
from bot.actions.loop import Actions
from bot.config import Settings
from bot.dialogue import stages, worker
from bot.dialogue.confirm import ConfirmAction
from bot.dialogue.locks import KeyedLocks
from bot.dialogue.quota import QuotaCharge, QuotaGate, Quotas
from bot.dialogue.regenerate import Regenerate
from bot.dialogue.speculation import Speculation
from bot.errors import ParleyError, PlatformError, StoreUnavailable
from bot.feedback import Feedback
from bot.handlers import Handler
from bot.handoff.flow import Handoffs
from bot.llm.client import LLM, CallScope
from bot.moderation.moderator import Moderator
from bot.ops.logs import turn_fields
from bot.ops.meter import Meter
from bot.ops.metrics import Metrics
from bot.ops.stats import Stats
from bot.reply import ReplySink, SinkFactory
from bot.routing.router import Router
from bot.store.context import ContextStore
from bot.store.dedupe import Deduper
from bot.store.inbox import Inbox
from bot.tenants import ProfileSource
from bot.turns import Outcome, Reply, Turn

log = logging.getLogger(__name__)


class DialogueManager:
    """Built once by the composition root; every collaborator is required (a feature that is
    off is configured off, e.g. handoff without a desk), and `handle` runs one turn."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: ContextStore,
        deduper: Deduper,
        llm: LLM,
        handlers: Mapping[str, Handler],
        router: Router,
        moderator: Moderator,
        tenants: ProfileSource,
        metrics: Metrics,
        handoffs: Handoffs,
        stats: Stats,
        actions: Actions,
        pending: PendingCalls,
        quotas: Quotas,
        meter: Meter,
    ) -> None:
        self._settings = settings
        self._tenants = tenants
        self._metrics = metrics
        self._locks = KeyedLocks()
        history = stages.History(store)
        self._stages: tuple[stages.Stage, ...] = (
            stages.Claim(deduper, store, handoffs),
            Regenerate(),  # the history a Regenerate button's turn sees and replaces
            stages.Commands(store),
            stages.DeskEvents(handoffs, Feedback(stats), history),
            stages.Validate(settings.context.max_input_chars),
            ConfirmAction(actions, pending, moderator, history),
            QuotaGate(quotas, metrics),  # after what must never be refused, before any engine request
            stages.ModerateInput(moderator, handoffs, history),
            stages.HandoffGate(handoffs, history),
            stages.RouteTurn(router, handlers, handoffs, Speculation(settings.routing, handlers), history),
            stages.AnswerTurn(handlers, moderator, llm, history),
        )
        self._observers: tuple[stages.Observer, ...] = (
            QuotaCharge(quotas),
            stages.Escalation(handoffs, history),
            stages.Figures(stats),
            stages.Metering(meter),
        )

    async def handle(self, turn: Turn, sink: ReplySink) -> Reply:
        """Run one turn to its end. Never raises except for cancellation."""
        # The channel's profile, resolved in memory (no round trip): every conversation of the
        # channel shares its system prompt, so the engine's prefix cache serves them all.
        profile = self._tenants.profile(turn.tenant, turn.profile or turn.channel)
        # Every engine request of this turn goes to the conversation's engine (prefix cache).
        scope = CallScope(
            affinity=str(turn.key) if self._settings.llm.sticky else None, share=self._share(turn), model=profile.model
        )
        state = stages.TurnState(turn, sink, scope, profile)
        async with self._locks.hold(turn.key):
            try:
                reply = await self._run(state)
            except ParleyError as exc:
                reply = await self._fail(state, exc, expected=True)
            except Exception as exc:  # the error boundary around one turn
                reply = await self._fail(state, exc, expected=False)
            finally:
                if state.ahead is not None:
                    await state.ahead.drop()  # read to its end by now, unless the sink failed first
            await self._observe(state, reply)
        self._metrics.observe(turn, reply)
        log.info(
            "turn %s in %.0f ms (llm %.0f ms, first token %s)",
            reply.outcome,
            reply.total * 1000,
            reply.llm_time * 1000,
            f"{reply.ttft * 1000:.0f} ms" if reply.ttft is not None else "-",
            extra=turn_fields(turn),
        )
        return reply

    def _share(self, turn: Turn) -> str | None:
        """Whose share of the engine this turn's requests wait in (`bot.llm.fairness`)."""
        match self._settings.llm.fair_share:
            case "user":
                return f"{turn.tenant}/{turn.user}"
            case "tenant":
                return turn.tenant
        return None

    async def _run(self, state: stages.TurnState) -> Reply:
        for stage in self._stages:
            if (reply := await stage(state)) is not None:
                return reply
        raise AssertionError("the answer stage always ends the turn")

    async def _observe(self, state: stages.TurnState, reply: Reply) -> None:
        """Observers never fail the turn: the user has had their answer."""
        for observer in self._observers:
            try:
                await observer.observe(state, reply)
            except StoreUnavailable as exc:  # Redis is down: the turn has said so already
                log.warning(
                    "%s after the turn skipped: %s", type(observer).__name__, exc, extra=turn_fields(state.turn)
                )
            except Exception:  # the error boundary around one observer
                log.exception("%s after the turn failed", type(observer).__name__, extra=turn_fields(state.turn))

    async def _fail(self, state: stages.TurnState, exc: BaseException, *, expected: bool) -> Reply:
        turn = state.turn
        if expected:
            log.error("turn failed: %r", exc, extra=turn_fields(turn))
        else:
            log.exception("turn crashed", extra=turn_fields(turn))
        if isinstance(exc, PlatformError) and exc.permanent:
            # The channel is gone or closed to the bot: a notice would fail the same way.
            return state.reply(Outcome.FAILED, text="", error=type(exc).__name__)
        text = messages.for_user(exc)
        try:
            await state.sink.send(text)
        except Exception:  # the sink is what failed: log it, the turn's outcome stays FAILED
            log.exception("could not tell the user about the failure", extra=turn_fields(turn))
        return state.reply(Outcome.FAILED, text=text, error=type(exc).__name__)

    async def serve(self, inbox: Inbox, sinks: Mapping[str, SinkFactory]) -> None:
        """Take turns from the inbox until it is closed, then finish those in flight."""
        await worker.serve(inbox, sinks, self.handle, max_in_flight=self._settings.dialogue.max_in_flight)
