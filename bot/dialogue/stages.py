"""The stages of a turn, in the order the dialogue manager runs them.

Each stage is a small object with one job, called with the turn's `TurnState`: it either
ends the turn (returns its `Reply`) or fills in the state and lets the next stage go on
(returns None). What runs after every turn, in the conversation's lock, is an observer
(`Escalation`, `Figures`, `Metering`; `bot.dialogue.quota` adds a stage and an observer of its
own). A new capability is a new stage, observer or handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Protocol

from bot import messages
from bot.dialogue.guard import Answer, guarded, moderated
from bot.dialogue.speculation import Ahead, Speculation
from bot.errors import InputRejected, LLMError, PlatformError, StoreUnavailable
from bot.feedback import Feedback
from bot.handlers import Handler, Request
from bot.handoff.desk import Ticket
from bot.handoff.flow import Handoffs, Step
from bot.llm.client import LLM, CallScope
from bot.moderation.moderator import Moderator
from bot.ops.logs import turn_fields
from bot.ops.meter import Meter, Spent
from bot.ops.stats import Stats
from bot.reply import Choices, ReplySink, cited
from bot.routing.router import ACTABLE, ACTION, HANDOFF, Route, Router
from bot.store.context import Context, ContextStore, Message, estimate_tokens
from bot.store.dedupe import Deduper
from bot.store.quota import Reservation
from bot.tenants import TenantConfig
from bot.turns import AGENT, FEEDBACK, RESOLVE, Outcome, Reply, Turn, check_size

log = logging.getLogger(__name__)

SAVE_RETRIES = (0.2, 0.5, 1.0, 2.0, 4.0)  # seconds between tries of a failed save (~8 s in all)
NO_ROUTE = Route("chat", "", "")  # until routing has run
# Turns the usage meter leaves out: a retry already counted, or one that will run again.
NOT_METERED = frozenset((Outcome.DUPLICATE, Outcome.DEFERRED))


@dataclass(slots=True)
class TurnState:
    """One turn on its way through the stages: what earlier stages found out for later ones.
    `turn` becomes the moderated turn once input moderation has run (redacted text is all the
    LLM and the store see); `llm` is the scope every engine call of the turn passes; `tenant` is
    the tenant's settings for the turn's channel (its profile, `bot.profiles`)."""

    turn: Turn
    sink: ReplySink
    llm: CallScope
    tenant: TenantConfig
    started: float = field(default_factory=time.perf_counter)
    context: Context = field(default_factory=Context)
    ticket: Ticket | None = None
    flags: tuple[str, ...] = ()  # moderation categories that fired on the input
    route: Route = NO_ROUTE
    ahead: Ahead | None = None  # a speculative chat answer, running beside routing
    quota: Reservation | None = None  # what the quota gate took for this turn, settled after it

    def request(self, route: Route | None = None) -> Request:
        return Request(self.turn, self.context, route or self.route, self.tenant, self.llm)

    def reply(self, outcome: Outcome, **fields: object) -> Reply:
        return Reply(
            self.turn.key,
            self.turn.event_id,
            outcome,
            total=time.perf_counter() - self.started,
            **fields,  # type: ignore[arg-type]  # Reply's own keyword fields, checked where each is passed
        )


class Stage(Protocol):
    async def __call__(self, state: TurnState) -> Reply | None:
        """End the turn with a reply, or return None to let the next stage go on."""
        ...


class Observer(Protocol):
    async def observe(self, state: TurnState, reply: Reply) -> None:
        """Look at a finished turn, in the conversation's lock; failures are logged, not raised."""
        ...


class History:
    """Saving a turn's messages to the context, riding out a short Redis outage: the answer
    has been shown, and a turn left unsaved would be missing from the context of every later one."""

    def __init__(self, store: ContextStore) -> None:
        self.store = store

    async def save(self, state: TurnState, new: Sequence[Message], *, after: str = "") -> None:
        """Save `new` once for the turn. `after` names a second saving of the turn's (a notice that
        follows it once its own messages are saved), which is kept under an id of its own."""
        turn = state.turn
        uid = f"{turn.uid}:{after}" if turn.uid and after else turn.uid
        for pause in SAVE_RETRIES:
            try:
                await self.store.save(turn.key, state.context, list(new), uid=uid)
                return
            except StoreUnavailable as exc:
                log.warning("saving the turn failed (%s); again in %.1f s", exc, pause, extra=turn_fields(turn))
                await asyncio.sleep(pause)
        await self.store.save(turn.key, state.context, list(new), uid=uid)

    async def record(self, state: TurnState, step: Step, **fields: object) -> Reply:
        """Save what a handoff step said and end the turn with its outcome."""
        if step.save:
            await self.save(state, step.save)
        return state.reply(step.outcome, text=step.text, error=step.error, **fields)


# -- the stages, in order ----------------------------------------------------------------------


class Claim:
    """Drop platform retries and load what the turn needs: its context and handoff ticket. The context
    is read beside the dedupe claim: one round trip of waiting, not two (a duplicate's read is
    simply dropped). While the store is down nothing has been shown yet: the turn waits."""

    def __init__(self, deduper: Deduper, store: ContextStore, handoffs: Handoffs) -> None:
        self._deduper, self._store, self._handoffs = deduper, store, handoffs

    async def __call__(self, state: TurnState) -> Reply | None:
        turn = state.turn
        try:
            if turn.command in ("help", "reset"):
                first = await self._deduper.claim(turn)
            else:
                first, state.context, state.ticket = await asyncio.gather(
                    self._deduper.claim(turn), self._store.load(turn.key), self._handoffs.ticket(turn.key)
                )
        except StoreUnavailable as exc:
            log.warning("store unavailable, turn deferred: %s", exc, extra=turn_fields(turn))
            return state.reply(Outcome.DEFERRED, error="StoreUnavailable")
        if not first:
            return state.reply(Outcome.DUPLICATE)
        if turn.uid and turn.uid in state.context.answered:
            # Saved by a worker that stopped before it could finish the turn in the inbox.
            log.info("turn %s was answered before its worker stopped", turn.uid, extra=turn_fields(turn))
            return state.reply(Outcome.DUPLICATE)
        return None


class Commands:
    """`help` and `reset`."""

    def __init__(self, store: ContextStore) -> None:
        self._store = store

    async def __call__(self, state: TurnState) -> Reply | None:
        if state.turn.command == "help":
            text = messages.HELP
        elif state.turn.command == "reset":
            await self._store.reset(state.turn.key)
            text = messages.RESET_DONE
        else:
            return None
        await state.sink.send(text)
        return state.reply(Outcome.COMMAND, text=text)


class DeskEvents:
    """A person's reply or resolve from the support desk, or a vote on an answer."""

    def __init__(self, handoffs: Handoffs, feedback: Feedback, history: History) -> None:
        self._handoffs, self._feedback, self._history = handoffs, feedback, history

    async def __call__(self, state: TurnState) -> Reply | None:
        command = state.turn.command
        if command == FEEDBACK:
            outcome, error = await self._feedback.vote(state.turn)
            return state.reply(outcome, error=error)
        if command in (AGENT, RESOLVE):
            step = await self._handoffs.desk_turn(state.turn, state.ticket, state.sink)
            return await self._history.record(state, step)
        return None


class Validate:
    """Refuse, with a clear answer, a message that is empty, too long or not text."""

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars

    async def __call__(self, state: TurnState) -> Reply | None:
        try:
            check_size(state.turn.text, self._max_chars)
            try:
                state.turn.text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates from bytes that were not UTF-8
                raise InputRejected("invalid_utf8", length=len(state.turn.text)) from None
        except InputRejected as exc:
            log.info("input rejected: %s", exc, extra=turn_fields(state.turn))
            text = messages.for_user(exc)
            await state.sink.send(text)
            return state.reply(Outcome.REJECTED, text=text, error=exc.reason)
        return None


class ModerateInput:
    """The tenant's checks on the input: refuse, redact or flag; an angry user goes to a person
    (a refused swear word starred out for them). From here on the turn is the moderated one."""

    def __init__(self, moderator: Moderator, handoffs: Handoffs, history: History) -> None:
        self._moderator, self._handoffs, self._history = moderator, handoffs, history

    async def __call__(self, state: TurnState) -> Reply | None:
        turn = state.turn
        verdict = await self._moderator.check(turn, turn.text, state.tenant.moderation, scope=state.llm)
        state.flags = verdict.reasons + verdict.flags + verdict.redacted
        if state.ticket is None and self._handoffs.hands_off_anger(verdict, state.turn):
            text = self._moderator.censor(verdict.text) if verdict.refused else verdict.text
            state.turn = replace(turn, text=text)
            step = await self._handoffs.hand_off(
                state.turn, state.context, state.sink, state.tenant, "anger", user_text=text
            )
            return await self._history.record(state, step, intent=HANDOFF, moderation=state.flags, route_step="anger")
        if verdict.refused:
            text = messages.moderation_refused(verdict.reasons)
            await state.sink.send(text)
            return state.reply(Outcome.REJECTED, text=text, error="moderation", moderation=state.flags)
        state.turn = replace(turn, text=verdict.text)
        return None


class HandoffGate:
    """A conversation handed to people: its messages go to them (and to the context), not to the bot."""

    def __init__(self, handoffs: Handoffs, history: History) -> None:
        self._handoffs, self._history = handoffs, history

    async def __call__(self, state: TurnState) -> Reply | None:
        if state.ticket is None:
            return None
        step = await self._handoffs.forward(state.turn, state.ticket, state.sink, state.tenant)
        return await self._history.record(state, step, intent=HANDOFF, moderation=state.flags)


class RouteTurn:
    """Decide which handler answers, with a speculative chat answer already running where that
    usually pays (`bot.dialogue.speculation`); a request for a person hands the turn off."""

    def __init__(
        self,
        router: Router,
        handlers: Mapping[str, Handler],
        handoffs: Handoffs,
        speculation: Speculation,
        history: History,
    ) -> None:
        self._router, self._handlers, self._handoffs = router, handlers, handoffs
        self._speculation, self._history = speculation, history

    async def __call__(self, state: TurnState) -> Reply | None:
        turn = state.turn
        # A conversation that may use actions answers chat and qa turns with the action handler,
        # which asks the engine what to call first: a plain chat answer started now would be dropped.
        acts = ACTION in self._handlers and bool(state.tenant.allowed_actions(turn.channel))
        if not acts:
            state.ahead = self._speculation.start(state.request(Route("chat", "speculative", turn.text)))
        if state.ahead is not None:
            await state.ahead.head_start()
        allowed = [intent for intent in state.tenant.handlers if intent in self._handlers]
        if self._handoffs.on_request:
            allowed.append(HANDOFF)

        async def as_chat(intent: str) -> bool:
            return await self._speculation.answers_as_chat(state.request(Route(intent, "candidate", turn.text)))

        try:
            route = await self._router.route(
                turn.text, command=turn.command, allowed=allowed, as_chat=as_chat, scope=state.llm
            )
        except StoreUnavailable as exc:
            # Routing reads the knowledge base's version; nothing has been shown yet, so the turn
            # waits for Redis as when its context could not be read.
            log.warning("store unavailable while routing, turn deferred: %s", exc, extra=turn_fields(turn))
            return state.reply(Outcome.DEFERRED, error="StoreUnavailable")
        log.info(
            "routed to %s by %s step (score %s) in %.1f ms",
            route.intent,
            route.step,
            f"{route.score:.2f}" if route.score is not None else "-",
            route.seconds * 1000,
            extra=turn_fields(turn),
        )
        if acts and route.intent in ACTABLE and route.step != "explicit":
            route = replace(route, intent=ACTION, otherwise=route.intent)
        state.route = route
        if not await self._speculation.keep(state.request()) and state.ahead is not None:
            await state.ahead.drop()
            state.ahead = None
        if route.intent == HANDOFF:
            step = await self._handoffs.hand_off(
                turn, state.context, state.sink, state.tenant, "request", user_text=turn.text
            )
            return await self._history.record(
                state, step, intent=HANDOFF, moderation=state.flags, route_step=route.step, route_time=route.seconds
            )
        return None


class AnswerTurn:
    """Stream the routed handler's answer (or the speculative one) through the output guard into
    the sink, and save both sides of the turn."""

    def __init__(self, handlers: Mapping[str, Handler], moderator: Moderator, llm: LLM, history: History) -> None:
        self._handlers, self._moderator, self._llm, self._history = handlers, moderator, llm, history

    async def __call__(self, state: TurnState) -> Reply:
        turn, route, sink = state.turn, state.route, state.sink
        # Counting the user's tokens runs beside the answer.
        user_tokens = asyncio.create_task(self._tokens(turn.text, state.llm))
        try:
            answer = Answer()
            request = state.request()
            if state.ahead is not None:
                deltas, answer.engine_started = state.ahead.deltas(), state.ahead.started
            else:
                deltas = cited(self._handlers[route.intent].answer(request), request.sources, sink)
            if state.tenant.moderation.check_output:
                deltas = moderated(deltas, self._moderator, turn, state.tenant.moderation)
            # Closed here, whatever the sink did: a sink that fails mid-answer leaves the stream
            # unfinished, and only closing it aborts the engine's request now (not at collection).
            shown_stream = guarded(deltas, answer)
            async with aclosing(shown_stream):
                shown = await sink.stream(shown_stream)
            if not shown.strip():
                # An engine that ends with nothing visible must not leave the user in silence.
                shown = messages.EMPTY_ANSWER
                await sink.send(shown)
            elif answer.error is None and isinstance(sink, Choices):
                for offer in request.offers:
                    try:
                        await sink.offer(offer)
                    except PlatformError as exc:  # the question still ends with "reply yes or no"
                        log.warning("could not show the buttons: %r", exc, extra=turn_fields(turn))
            new = [Message("user", turn.text, _tokens_now(user_tokens, turn.text))]
            if answer.text.strip():
                tokens = state.llm.usage.completion_tokens or await self._tokens(answer.text, state.llm)
                new.append(Message("assistant", answer.text, tokens))
            await self._history.save(state, new)
        finally:
            user_tokens.cancel()
        if answer.error is not None:
            log.warning("answer failed: %r", answer.error, extra=turn_fields(turn))
        return state.reply(
            Outcome.FAILED if answer.error else Outcome.ANSWERED,
            text=shown,
            error=type(answer.error).__name__ if answer.error else "",
            ttft=answer.first_token - state.started if answer.first_token else None,
            llm_time=answer.llm_time,
            intent=route.intent,
            route_step=route.step,
            route_time=route.seconds,
            moderation=state.flags,
            prompt_tokens=state.llm.usage.prompt_tokens,
            completion_tokens=state.llm.usage.completion_tokens,
        )

    async def _tokens(self, text: str, scope: CallScope) -> int:
        try:
            return await self._llm.count_tokens(text, scope=scope)
        except LLMError:
            return estimate_tokens(text)  # the engine is down; the turn is failing anyway


def _tokens_now(count: asyncio.Task[int], text: str) -> int:
    """The exact count if /tokenize has answered by now, else an estimate: the count only
    steers when history is compacted, and waiting for it would put an engine round trip on
    every turn's critical path (it runs beside generation instead)."""
    if count.done() and not count.cancelled():
        return count.result()
    return estimate_tokens(text)


# -- after every turn --------------------------------------------------------------------------


class Escalation:
    """The hand-off after too many failed answers in a row (`PARLEY_HANDOFF_AFTER_FAILURES`)."""

    def __init__(self, handoffs: Handoffs, history: History) -> None:
        self._handoffs, self._history = handoffs, history

    async def observe(self, state: TurnState, reply: Reply) -> None:
        if await self._handoffs.escalate(state.turn, reply) is None:
            return
        # The turn's own messages are saved by now: the context is read again.
        state.context = await self._history.store.load(state.turn.key)
        step = await self._handoffs.hand_off(
            state.turn, state.context, state.sink, state.tenant, "failures", user_text=None
        )
        if step.save:
            await self._history.save(state, step.save, after="failures")


class Figures:
    """What `parley report` counts per tenant and day: answered turns (handoffs, resolves and
    votes are counted where they happen)."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    async def observe(self, state: TurnState, reply: Reply) -> None:
        if reply.outcome is Outcome.ANSWERED and state.turn.command not in (AGENT, RESOLVE, FEEDBACK):
            await self._stats.answered(state.turn)


class Metering:
    """The usage meter (`bot.ops.meter`): every turn a user sent, with the tokens the engine
    counted for all its requests and its duration, per user, channel and tenant and day; a turn
    refused over quota counts as refused. Retries and desk events (people, votes) are not turns
    of the user's."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter

    async def observe(self, state: TurnState, reply: Reply) -> None:
        if reply.outcome in NOT_METERED or state.turn.command in (AGENT, RESOLVE, FEEDBACK):
            return
        usage = state.llm.usage
        await self._meter.record(
            state.turn,
            Spent(
                prompt=usage.prompt_tokens,
                completion=usage.completion_tokens,
                seconds=reply.total,
                refused=reply.outcome is Outcome.OVER_QUOTA,
            ),
        )
