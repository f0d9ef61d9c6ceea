"""Handing a conversation to people at a support desk, and back; and 👍/👎 on answers.

A conversation is handed off when the user asks for a person (the `handoff` intent),
seems angry (moderation's anger signal), or failed to get an answer several times in a
row, as `HandoffSettings` allows. Then:

- the user is told a person will reply, and a `Desk` (the Slack support channel, see
  `adapters/slack/desk.py`) opens a ticket thread with the transcript (personal data
  redacted unless the tenant's moderation has it off), the platform, tenant and a link.
  What customers (and the model) wrote reaches the desk as `Said` lines, which the desk
  quotes as a block: a customer who types a line break and `*Parley:* identity verified`
  writes inside a quotation, never a line that passes for Parley's own;
- the bot stops answering: the user's further messages are saved to the context and
  posted into the ticket thread;
- what people write in the thread comes back as turns of the *user's* conversation
  (`command="agent"`, the person's name in `meta["agent"]`), through the inbox like any
  other turn, so ordering and replicas work unchanged; they are delivered with the
  person's name (as a reply of its own kind where the sink can show one, `AgentRelay`)
  and saved to the context as the assistant's side. The desk lets only agents act
  (its own workspace, optionally some user groups: `adapters/slack/agents.py`);
- `command="resolve"` hands the conversation back; the bot then sees the whole exchange.

Desk and feedback events arrive as turns with `command` "agent", "resolve" or "feedback"
(text "up"/"down", `reply_to` the answered turn's event id); adapters build them and
must never let a customer's own text become one.

State lives in Redis (every replica sees the same): per conversation, under its hash tag,

    {prefix}:handoff:{conversation}            JSON ticket while handed off
    {prefix}:handoff:{conversation}:failures   failed answers in a row

and per desk thread (looked up by the thread, so not under the conversation's tag)

    {prefix}:handoff:thread:{desk}:{thread}    JSON ticket the thread was opened for

all expiring with the context (`PARLEY_REDIS_CONTEXT_TTL`, refreshed while people talk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol, runtime_checkable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot import messages
from bot.config import HandoffSettings
from bot.store.context import Context, Message, estimate_tokens
from bot.errors import PlatformError, StoreUnavailable
from bot.ops.logs import turn_fields
from bot.moderation.moderator import HOSTILE, Verdict, redact_pii
from bot.reply import ReplySink
from bot.routing.router import HANDOFF
from bot.ops.stats import FEEDBACK, VOTES, Stats
from bot.tenants import TenantConfig
from bot.turns import ConversationKey, Outcome, Reply, Turn

log = logging.getLogger(__name__)

AGENT, RESOLVE = "agent", "resolve"
DESK_COMMANDS = (AGENT, RESOLVE, FEEDBACK)
# What the customer's adapter must not get back on a later, unrelated delivery: one-off reply
# handles (a Discord interaction token lives 15 minutes, a Slack response_url answers once).
# The Slack mentions a message made are that message's own: a later reply must not repeat them.
_ONE_OFF_META = ("interaction_token", "application_id", "original", "response_url", "open_thread", "mentions")
ANGER_REASONS = frozenset(("profanity", *HOSTILE))  # refusals an angry user may get past, to a person


@dataclass(frozen=True, slots=True)
class Ticket:
    """A conversation handed to people: where its desk thread is and how to reach the customer
    later (`meta` and `reply_to` of the turn that handed it off, minus one-off handles)."""

    key: ConversationKey
    desk: str  # the desk's name ("slack")
    thread: str  # the desk's id for the ticket thread ("" until the desk has opened it)
    user: str  # the customer
    reason: str  # request | anger | failures
    opened: float = field(default_factory=time.time)
    meta: dict[str, str] = field(default_factory=dict)
    reply_to: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["key"] = [self.key.platform, self.key.tenant, self.key.channel, self.key.thread]
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Ticket:
        data = json.loads(raw)
        data["key"] = ConversationKey(*data["key"])
        return cls(**data)

    def turn(self, *, command: str, user: str, text: str, event_id: str, meta: Mapping[str, str] = {}) -> Turn:
        """A turn of the customer's conversation for an event at the desk (a reply, a resolve)."""
        return Turn(
            platform=self.key.platform, tenant=self.key.tenant, channel=self.key.channel, thread=self.key.thread,
            user=user, text=text, event_id=event_id, command=command, reply_to=self.reply_to,
            meta={**self.meta, "desk": self.desk, "desk_thread": self.thread, **meta},
        )


@dataclass(frozen=True, slots=True)
class Said:
    """A line of a transcript: who (a label of Parley's own) and what they wrote (anyone's text)."""

    speaker: str
    text: str


class Desk(Protocol):
    """Where people answer handed-off conversations. An adapter that offers one registers it in
    `Runtime.desks` under its `name` once it is ready to take tickets (`bot/` never imports an
    adapter)."""

    name: str

    async def open(self, ticket: Ticket) -> str:
        """Start a ticket thread (who, where, why, how to hand back); returns the thread's id."""
        ...

    async def post(self, thread: str, text: str) -> None:
        """Add a notice of Parley's own for the people to a ticket thread, shown as text (it may
        name a person, so never as markup that notifies or links)."""
        ...

    async def quote(self, thread: str, lines: Sequence[Said]) -> None:
        """Add what others wrote (the transcript, a customer's later message) to a ticket thread:
        each line's text quoted as a block under its speaker, so that no text can pass for a
        line of Parley's own, nor notify or link. No lines: say there were none."""
        ...


@runtime_checkable
class AgentRelay(Protocol):
    """A sink that shows a person's reply as such (the web chat: a bubble of its own kind with
    their name), not as one more message of the bot's."""

    async def relay(self, agent: str, text: str) -> None: ...


class HandoffGate(Protocol):
    """A cap on new tickets from one platform, so that users who cost nothing to make (the web
    chat's anonymous visitors) cannot flood the desk. An adapter registers one in
    `Runtime.handoff_gates` under its platform when it is created."""

    async def admit(self, turn: Turn, reason: str) -> bool:
        """Count a ticket for `turn` and say True, or say False (and log why) when over a cap."""
        ...


def conversation_link(key: ConversationKey) -> str | None:
    """A link that opens the customer's conversation, where the platform has one."""
    if key.platform == "slack":
        base = f"https://app.slack.com/client/{key.tenant}/{key.channel}"
        return f"{base}/thread/{key.channel}-{key.thread}" if key.thread else base
    if key.platform == "discord":
        if key.tenant == "dm":
            return f"https://discord.com/channels/@me/{key.channel}"
        return f"https://discord.com/channels/{key.tenant}/{key.channel}" + (f"/{key.thread}" if key.thread else "")
    return None


# -- the state ---------------------------------------------------------------------------------


class HandoffStore(Protocol):
    async def ticket(self, key: ConversationKey) -> Ticket | None:
        """The open ticket of a conversation, or None while the bot answers it."""
        ...

    async def open(self, ticket: Ticket) -> None:
        """The conversation is handed off: remember its ticket and the thread's way back to it."""
        ...

    async def touch(self, ticket: Ticket) -> None:
        """Keep a ticket people are working on from expiring."""
        ...

    async def close(self, key: ConversationKey) -> None:
        """Handed back. The thread's mapping stays (until it expires), so a late message
        in the thread is recognised and answered with a notice instead of being lost."""
        ...

    async def by_thread(self, desk: str, thread: str) -> Ticket | None:
        """The ticket a desk thread was opened for (open or closed), or None."""
        ...

    async def failed(self, key: ConversationKey) -> int:
        """One more failed answer in a row; returns how many now."""
        ...

    async def answered(self, key: ConversationKey) -> None:
        """An answer got through: the run of failures is over."""
        ...


class RedisHandoffStore:
    def __init__(self, redis: Redis, *, prefix: str, ttl: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl

    def _state(self, key: ConversationKey) -> str:
        return f"{self._prefix}:handoff:{key.hash_tag}"

    def _thread(self, desk: str, thread: str) -> str:
        return f"{self._prefix}:handoff:thread:{desk}:{thread}"

    async def ticket(self, key: ConversationKey) -> Ticket | None:
        try:
            raw = await self._redis.get(self._state(key))
        except RedisError as exc:
            raise StoreUnavailable(f"handoff state read failed: {exc}") from exc
        return Ticket.from_json(raw) if raw else None

    async def open(self, ticket: Ticket) -> None:
        raw = ticket.to_json()
        try:
            # Two slots in a cluster (the thread is not under the conversation's tag): no
            # transaction. The thread first, so a reply written at once already finds its way.
            async with self._redis.pipeline(transaction=False) as pipe:
                await pipe.set(self._thread(ticket.desk, ticket.thread), raw, ex=self._ttl).set(
                    self._state(ticket.key), raw, ex=self._ttl
                ).delete(self._state(ticket.key) + ":failures").execute()
        except RedisError as exc:
            raise StoreUnavailable(f"handoff state write failed: {exc}") from exc

    async def touch(self, ticket: Ticket) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                await pipe.expire(self._state(ticket.key), self._ttl).expire(
                    self._thread(ticket.desk, ticket.thread), self._ttl
                ).execute()
        except RedisError as exc:
            log.warning("could not refresh the expiry of ticket %s: %s", ticket.thread, exc)

    async def close(self, key: ConversationKey) -> None:
        try:
            await self._redis.delete(self._state(key))
        except RedisError as exc:
            raise StoreUnavailable(f"handoff state write failed: {exc}") from exc

    async def by_thread(self, desk: str, thread: str) -> Ticket | None:
        try:
            raw = await self._redis.get(self._thread(desk, thread))
        except RedisError as exc:
            raise StoreUnavailable(f"ticket look-up failed: {exc}") from exc
        return Ticket.from_json(raw) if raw else None

    async def failed(self, key: ConversationKey) -> int:
        counter = self._state(key) + ":failures"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(counter).expire(counter, self._ttl).execute()
        except RedisError as exc:
            raise StoreUnavailable(f"failure count failed: {exc}") from exc
        return int(count)

    async def answered(self, key: ConversationKey) -> None:
        try:
            await self._redis.delete(self._state(key) + ":failures")
        except RedisError as exc:
            raise StoreUnavailable(f"failure count reset failed: {exc}") from exc


class MemoryHandoffStore:
    """In-process twin for `parley chat` without Redis; bounded, and without expiry (the
    process's life is shorter than a ticket's)."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._open: dict[ConversationKey, Ticket] = {}
        self._threads: OrderedDict[tuple[str, str], Ticket] = OrderedDict()
        self._failures: OrderedDict[ConversationKey, int] = OrderedDict()
        self._max = max_entries

    async def ticket(self, key: ConversationKey) -> Ticket | None:
        return self._open.get(key)

    async def open(self, ticket: Ticket) -> None:
        self._threads[(ticket.desk, ticket.thread)] = ticket
        while len(self._threads) > self._max:
            self._threads.popitem(last=False)
        self._open[ticket.key] = ticket
        self._failures.pop(ticket.key, None)

    async def touch(self, ticket: Ticket) -> None:
        return None

    async def close(self, key: ConversationKey) -> None:
        self._open.pop(key, None)

    async def by_thread(self, desk: str, thread: str) -> Ticket | None:
        return self._threads.get((desk, thread))

    async def failed(self, key: ConversationKey) -> int:
        self._failures[key] = self._failures.pop(key, 0) + 1
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)
        return self._failures[key]

    async def answered(self, key: ConversationKey) -> None:
        self._failures.pop(key, None)


# -- the logic ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """What a handoff step did, for the dialogue manager to save and report: the outcome,
    the text the customer was shown, the messages to append to the context."""

    outcome: Outcome
    text: str = ""
    save: tuple[Message, ...] = ()
    error: str = ""


def _said(role: str, text: str) -> Message:
    return Message(role, text, estimate_tokens(text))


def _for_desk(text: str, tenant: TenantConfig) -> str:
    """What the support channel sees. The context holds what moderation let through; "flag"
    lets personal data through to the bot, but a support channel is read by many: it is
    redacted there all the same, unless the tenant turned personal-data checks off."""
    return text if tenant.moderation.personal_data == "off" else redact_pii(text)


class Handoffs:
    """The decisions and steps of handing off, handing back and voting. Built once by the
    composition root; the dialogue manager calls it inside the conversation's lock and
    saves what each step returns (so the context's turn bookkeeping stays in one place)."""

    def __init__(
        self,
        *,
        settings: HandoffSettings,
        store: HandoffStore,
        stats: Stats,
        desks: Mapping[str, Desk],
        gates: Mapping[str, HandoffGate] | None = None,
    ) -> None:
        self._settings = settings
        self.store = store
        self.stats = stats
        self._desks = desks  # filled by adapters after this is built: read it at each use
        self._gates = gates if gates is not None else {}  # likewise, by platform

    @property
    def on_request(self) -> bool:
        return self._settings.on_request

    def desk(self) -> Desk | None:
        """The desk new tickets go to (Slack's support channel is the only kind so far)."""
        return next(iter(self._desks.values()), None)

    async def ticket(self, key: ConversationKey) -> Ticket | None:
        if not self._settings.enabled:
            return None  # no support channel, no tickets: no round trip on every turn
        return await self.store.ticket(key)

    def hands_off_anger(self, verdict: Verdict) -> bool:
        """Whether an input's anger hands the conversation to a person now. Only when a desk
        can take it, and only past refusals for anger itself (swearing, hostility): a message
        refused for personal data stays refused."""
        return (
            self._settings.on_anger
            and verdict.angry
            and self.desk() is not None
            and set(verdict.reasons) <= ANGER_REASONS
        )

    # -- handing off -----------------------------------------------------------------------------

    async def hand_off(
        self, turn: Turn, context: Context, sink: ReplySink, tenant: TenantConfig, reason: str, *, user_text: str | None
    ) -> Step:
        """Open a ticket and tell the user. `user_text` is the turn's (moderated) message when it
        is not in the context yet; None when the turn's own message was already saved."""
        asked = (_said("user", user_text),) if user_text is not None else ()

        def told(outcome: Outcome, text: str, error: str = "") -> Step:
            return Step(outcome, text, (*asked, _said("assistant", text)), error=error)

        desk = self.desk()
        if desk is None:
            log.info("handoff (%s) asked, but no desk is configured: the bot keeps answering", reason,
                     extra=turn_fields(turn))
            await sink.send(messages.NO_AGENT)
            return told(Outcome.ANSWERED, messages.NO_AGENT)
        gate = self._gates.get(turn.platform)
        if gate is not None and not await gate.admit(turn, reason):
            await sink.send(messages.HANDOFF_CAPPED)
            return told(Outcome.REJECTED, messages.HANDOFF_CAPPED, "handoff cap")
        meta = {k: v for k, v in turn.meta.items() if k not in _ONE_OFF_META}
        ticket = Ticket(turn.key, desk.name, "", turn.user, reason, meta=meta, reply_to=turn.reply_to)
        try:
            thread = await desk.open(ticket)
        except Exception as exc:  # a desk that cannot be reached must not leave the user in silence
            log.error("could not open a ticket at desk %s: %r", desk.name, exc, extra=turn_fields(turn))
            await sink.send(messages.NO_AGENT_NOW)
            return told(Outcome.FAILED, messages.NO_AGENT_NOW, f"desk: {type(exc).__name__}")
        ticket = replace(ticket, thread=thread)
        # Stored before anything else is posted, so the people's first reply already finds its way.
        await self.store.open(ticket)
        log.info("handed off to desk %s, thread %s (%s)", desk.name, thread, reason, extra=turn_fields(turn))
        try:
            await desk.quote(thread, self._transcript(context, user_text, tenant))
        except Exception as exc:  # the ticket exists and people can answer: handed off all the same
            log.error("ticket %s opened, but its transcript could not be posted: %r", thread, exc, extra=turn_fields(turn))
        notice = messages.HANDED_OFF_AFTER_FAILURES if reason == "failures" else messages.HANDED_OFF
        try:
            await sink.send(notice)
        except PlatformError as exc:  # handed off all the same: the people will reply
            log.warning("could not tell the user about the handoff: %s", exc, extra=turn_fields(turn))
        await self._count(self.stats.handed_off(turn), turn)
        return told(Outcome.HANDED_OFF, notice)

    def _transcript(self, context: Context, user_text: str | None, tenant: TenantConfig) -> list[Said]:
        speakers = {"user": messages.CUSTOMER, "assistant": messages.BOT_NAME}
        lines = [Said(messages.SUMMARY, context.summary)] if context.summary else []
        lines += [Said(speakers.get(m.role, m.role), m.content) for m in context.messages]
        if user_text is not None:
            lines.append(Said(messages.CUSTOMER, user_text))
        return [Said(line.speaker, _for_desk(line.text, tenant)) for line in lines]

    async def forward(self, turn: Turn, ticket: Ticket, sink: ReplySink, tenant: TenantConfig) -> Step:
        """A user's message while handed off: to the ticket thread, and to the context."""
        desk = self._desks.get(ticket.desk)
        text = _for_desk(turn.text, tenant)
        try:
            if desk is None:
                raise LookupError(f"desk {ticket.desk} is not running in this process")
            await desk.quote(ticket.thread, [Said(messages.CUSTOMER, text)])
        except Exception as exc:
            log.error("could not forward to ticket %s: %r", ticket.thread, exc, extra=turn_fields(turn))
            await sink.send(messages.FORWARD_FAILED)
            return Step(Outcome.FAILED, messages.FORWARD_FAILED, error=f"desk: {type(exc).__name__}")
        await self.store.touch(ticket)
        log.info("forwarded to ticket %s", ticket.thread, extra=turn_fields(turn))
        return Step(Outcome.FORWARDED, save=(_said("user", turn.text),))

    # -- events from the desk and from feedback buttons --------------------------------------------

    async def desk_turn(self, turn: Turn, ticket: Ticket | None, sink: ReplySink) -> Step:
        if turn.command == FEEDBACK:
            return await self._feedback(turn)
        thread = turn.meta.get("desk_thread", "")
        desk = self._desks.get(turn.meta.get("desk", ""))
        agent = turn.meta.get("agent") or turn.user
        if ticket is None or ticket.thread != thread:
            stale = ticket is not None
            why = "handed off again in a newer ticket" if stale else "not handed off"
            notice = messages.STALE_TICKET if stale else (
                messages.AGENT_NOT_DELIVERED if turn.command == AGENT else messages.ALREADY_WITH_BOT
            )
            log.info("%s from ticket %s ignored: the conversation is %s", turn.command, thread, why,
                     extra=turn_fields(turn))
            await self._tell_desk(desk, thread, notice, turn)
            return Step(Outcome.IGNORED, error=why)
        if turn.command == RESOLVE:
            return await self._resolve(turn, ticket, desk, agent, sink)
        if not turn.text.strip():
            log.info("empty message from %s in ticket %s ignored", agent, thread, extra=turn_fields(turn))
            return Step(Outcome.IGNORED, error="empty")
        text = messages.agent_reply(agent, turn.text)
        try:
            if isinstance(sink, AgentRelay):
                await sink.relay(agent, turn.text)
            else:
                await sink.send(text)
        except PlatformError as exc:
            log.error("could not deliver %s's reply: %s", agent, exc, extra=turn_fields(turn))
            await self._tell_desk(desk, thread, messages.relay_failed(exc.code or str(exc.status or "error")), turn)
            return Step(Outcome.FAILED, error=f"delivery: {exc.code or exc.status}")
        await self.store.touch(ticket)
        return Step(Outcome.RELAYED, text, (_said("assistant", text),))

    async def _resolve(self, turn: Turn, ticket: Ticket, desk: Desk | None, agent: str, sink: ReplySink) -> Step:
        await self.store.close(ticket.key)
        log.info("resolved by %s: back with the bot", agent, extra=turn_fields(turn))
        await self._tell_desk(desk, ticket.thread, messages.resolved_by(agent), turn)
        try:
            await sink.send(messages.HANDED_BACK)
        except PlatformError as exc:
            log.warning("could not tell the user the bot is back: %s", exc, extra=turn_fields(turn))
        await self._count(self.stats.resolved(turn), turn)
        return Step(Outcome.RESOLVED, messages.HANDED_BACK, (_said("assistant", messages.HANDED_BACK),))

    async def _feedback(self, turn: Turn) -> Step:
        vote = turn.text.strip().lower()
        if vote not in VOTES or not turn.reply_to:
            log.info("feedback %r on %r ignored: not a vote on an answer", vote, turn.reply_to, extra=turn_fields(turn))
            return Step(Outcome.IGNORED, error="not a vote")
        result = await self.stats.vote(turn, turn.reply_to, vote)
        if result == "unknown":
            log.info("feedback on %s ignored: no such answer in this conversation", turn.reply_to, extra=turn_fields(turn))
            return Step(Outcome.IGNORED, error="unknown answer")
        if result == "same":
            log.info("feedback on %s unchanged (%s again)", turn.reply_to, vote, extra=turn_fields(turn))
            return Step(Outcome.IGNORED, error="same vote")
        log.info("feedback %s on %s (%s)", vote, turn.reply_to, result, extra=turn_fields(turn))
        return Step(Outcome.FEEDBACK)

    async def _tell_desk(self, desk: Desk | None, thread: str, text: str, turn: Turn) -> None:
        if desk is None or not thread:
            log.warning("cannot tell the desk (%s): not running in this process", turn.meta.get("desk"),
                        extra=turn_fields(turn))
            return
        try:
            await desk.post(thread, text)
        except Exception as exc:
            log.warning("could not post to ticket %s: %r", thread, exc, extra=turn_fields(turn))

    # -- after every turn --------------------------------------------------------------------------

    async def after(self, turn: Turn, reply: Reply) -> str | None:
        """Count what the turn did; returns "failures" when the conversation must be handed off
        now because answers failed `after_failures` times in a row."""
        if turn.command in DESK_COMMANDS:
            return None
        limit = self._settings.after_failures
        # The run of failures is kept only where it can lead somewhere: a limit and a desk.
        counting = bool(limit) and self.desk() is not None
        if reply.outcome is Outcome.ANSWERED:
            updates = [self.stats.answered(turn), *([self.store.answered(turn.key)] if counting else [])]
            await asyncio.gather(*(self._count(update, turn) for update in updates))
            return None
        if reply.outcome is not Outcome.FAILED or reply.intent == HANDOFF or not counting:
            return None
        failures = await self.store.failed(turn.key)
        if failures < limit or await self.store.ticket(turn.key) is not None:
            return None
        log.info("%s failed answers in a row: handing off", failures, extra=turn_fields(turn))
        return "failures"

    @staticmethod
    async def _count(update: Awaitable[None], turn: Turn) -> None:
        """Figures are worth a log line, not a failed turn."""
        try:
            await update
        except StoreUnavailable as exc:
            log.warning("could not update the figures: %s", exc, extra=turn_fields(turn))
