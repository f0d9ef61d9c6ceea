"""Handing a conversation to people at a support desk, and back.

A conversation is handed off when the user asks for a person (the `handoff` intent),
seems angry (moderation's anger signal), or failed to get an answer several times in a
row, as `HandoffSettings` allows. Then:

- the user is told a person will reply, and a `Desk` (a Slack support channel, see
  `adapters/slack/desk.py`) opens a ticket thread with the transcript (personal data
  redacted unless the tenant's moderation has it off), the platform, tenant and a link.
  The channel is the conversation's profile's (`handoff_channel`), else the desk's default.
  A conversation with neither has no desk, as in a deployment without one: the user is told
  no one is reachable from there. So is one whose channel the desk finds unfit (`DeskRefused`:
  logged with the reason; nothing is posted there). What customers (and the model) wrote
  reaches the desk as `Said` lines, which the desk quotes as a block: a customer who types a
  line break and `*Parley:* identity verified` writes inside a quotation, never a line that
  passes for Parley's own;
- the bot stops answering: the user's further messages are saved to the context and
  posted into the ticket thread;
- what people write in the thread comes back as turns of the *user's* conversation
  (`command="agent"`, the person's name in `Turn.agent`), through the inbox like any
  other turn, so ordering and replicas work unchanged; they are delivered with the
  person's name (as a reply of its own kind where the sink can show one, `AgentRelay`)
  and saved to the context as the assistant's side. The desk lets only agents act
  (its own workspace, optionally some user groups: `adapters/slack/agents.py`);
- `command="resolve"` hands the conversation back; the bot then sees the whole exchange.

Desk events arrive as turns with `command` "agent" or "resolve"; adapters build them and
must never let a customer's own text become one. Votes on answers are `bot.feedback`'s.

State lives in Redis (`bot.handoff.store`); what a desk is, in `bot.handoff.desk`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, replace

from bot import messages
from bot.config import HandoffSettings
from bot.errors import DeskRefused, PlatformError, StoreUnavailable
from bot.handoff.desk import AgentRelay, Desk, HandoffGate, Said, Ticket, desk_for
from bot.handoff.store import HandoffStore
from bot.moderation.moderator import HOSTILE, Verdict
from bot.moderation.pii import redact_pii
from bot.ops.logs import turn_fields
from bot.ops.stats import Stats
from bot.reply import ReplySink
from bot.routing.router import HANDOFF
from bot.store.context import Context, Message, estimate_tokens
from bot.tenants import ProfileSource, TenantConfig
from bot.turns import AGENT, DESK_COMMANDS, RESOLVE, ConversationKey, Outcome, Reply, Turn

log = logging.getLogger(__name__)

ANGER_REASONS = frozenset(("profanity", *HOSTILE))  # refusals an angry user may get past, to a person


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
    """The decisions and steps of handing off and handing back. Built once by the
    composition root; the dialogue manager calls it inside the conversation's lock and
    saves what each step returns (so the context's turn bookkeeping stays in one place)."""

    def __init__(
        self,
        *,
        settings: HandoffSettings,
        store: HandoffStore,
        stats: Stats,
        desks: Mapping[str, Desk],
        profiles: ProfileSource,
        gates: Mapping[str, HandoffGate] | None = None,
    ) -> None:
        self._settings = settings
        self.store = store
        self.stats = stats
        self._desks = desks  # filled by adapters after this is built: read it at each use
        self._profiles = profiles  # where a conversation's tickets go: its profile's `handoff_channel`
        self._gates = gates if gates is not None else {}  # likewise, by platform

    @property
    def on_request(self) -> bool:
        return self._settings.on_request

    def _desk_of(self, turn: Turn) -> Desk | None:
        return desk_for(self._desks, self._profiles, turn)

    async def ticket(self, key: ConversationKey) -> Ticket | None:
        if not self._desks:
            # No desk, no tickets: no round trip on every turn. (With Slack there is one: any
            # profile may name a desk channel at run time.)
            return None
        return await self.store.ticket(key)

    def hands_off_anger(self, verdict: Verdict, turn: Turn) -> bool:
        """Whether an input's anger hands the conversation to a person now. Only when a desk
        can take `turn`'s conversation (as its profile says), and only past refusals for anger
        itself (swearing, hostility): a message refused for personal data stays refused."""
        return (
            self._settings.on_anger
            and verdict.angry
            and set(verdict.reasons) <= ANGER_REASONS
            and self._desk_of(turn) is not None
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

        target = tenant.handoff_channel  # `tenant` is the turn's profile: where `_desk_of` looks
        desk = self._desk_of(turn)
        if desk is None:
            log.info(
                "handoff (%s) asked, but no desk takes this conversation's tickets (handoff_channel %s, "
                "and the default desk's): the bot keeps answering",
                reason,
                target or "unset",
                extra=turn_fields(turn),
            )
            await sink.send(messages.NO_AGENT)
            return told(Outcome.ANSWERED, messages.NO_AGENT)
        gate = self._gates.get(turn.platform)
        if gate is not None and not await gate.admit(turn, reason):
            await sink.send(messages.HANDOFF_CAPPED)
            return told(Outcome.REJECTED, messages.HANDOFF_CAPPED, "handoff cap")
        ticket = Ticket(turn.key, desk.name, "", turn.user, reason, address=dict(turn.address), reply_to=turn.reply_to)
        try:
            thread = await desk.open(ticket, target)
        except DeskRefused as exc:  # no ticket where the profile points: the user is told no one is reachable
            log.error("handoff (%s) refused: %s", reason, exc, extra=turn_fields(turn))
            await sink.send(messages.NO_AGENT)
            return told(Outcome.FAILED, messages.NO_AGENT, "desk: channel refused")
        except PlatformError as exc:  # a desk that cannot be reached must not leave the user in silence
            log.error("could not open a ticket at desk %s: %r", desk.name, exc, extra=turn_fields(turn))
            await sink.send(messages.NO_AGENT_NOW)
            return told(Outcome.FAILED, messages.NO_AGENT_NOW, f"desk: {type(exc).__name__}")
        ticket = replace(ticket, thread=thread)
        # Stored before anything else is posted, so the people's first reply already finds its way.
        await self.store.open(ticket)
        log.info("handed off to desk %s, thread %s (%s)", desk.name, thread, reason, extra=turn_fields(turn))
        try:
            await desk.quote(thread, self._transcript(context, user_text, tenant))
        except PlatformError as exc:  # the ticket exists and people can answer: handed off all the same
            log.error(
                "ticket %s opened, but its transcript could not be posted: %r", thread, exc, extra=turn_fields(turn)
            )
        notice = messages.HANDED_OFF_AFTER_FAILURES if reason == "failures" else messages.HANDED_OFF
        try:
            await sink.send(notice)
        except PlatformError as exc:  # handed off all the same: the people will reply
            log.warning("could not tell the user about the handoff: %s", exc, extra=turn_fields(turn))
        await self._tally(self.stats.handed_off(turn), turn)
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
        try:
            if desk is None:
                raise PlatformError(f"desk {ticket.desk} is not running in this process", platform=ticket.desk)
            await desk.quote(ticket.thread, [Said(messages.CUSTOMER, _for_desk(turn.text, tenant))])
        except PlatformError as exc:
            log.error("could not forward to ticket %s: %r", ticket.thread, exc, extra=turn_fields(turn))
            await sink.send(messages.FORWARD_FAILED)
            return Step(Outcome.FAILED, messages.FORWARD_FAILED, error=f"desk: {type(exc).__name__}")
        await self.store.touch(ticket)
        log.info("forwarded to ticket %s", ticket.thread, extra=turn_fields(turn))
        return Step(Outcome.FORWARDED, save=(_said("user", turn.text),))

    # -- events from the desk ----------------------------------------------------------------------

    async def desk_turn(self, turn: Turn, ticket: Ticket | None, sink: ReplySink) -> Step:
        """A person's reply (`agent`) or `resolve` from a ticket thread."""
        thread = turn.desk_thread
        desk = self._desks.get(turn.desk)
        agent = turn.agent or turn.user
        if ticket is None or ticket.thread != thread:
            stale = ticket is not None
            why = "handed off again in a newer ticket" if stale else "not handed off"
            notice = (
                messages.STALE_TICKET
                if stale
                else (messages.AGENT_NOT_DELIVERED if turn.command == AGENT else messages.ALREADY_WITH_BOT)
            )
            log.info(
                "%s from ticket %s ignored: the conversation is %s", turn.command, thread, why, extra=turn_fields(turn)
            )
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
        await self._tally(self.stats.resolved(turn), turn)
        return Step(Outcome.RESOLVED, messages.HANDED_BACK, (_said("assistant", messages.HANDED_BACK),))

    async def _tell_desk(self, desk: Desk | None, thread: str, text: str, turn: Turn) -> None:
        if desk is None or not thread:
            log.warning("cannot tell the desk (%s): not running in this process", turn.desk, extra=turn_fields(turn))
            return
        try:
            await desk.post(thread, text)
        except (PlatformError, OSError) as exc:  # a notice for the people is not worth failing the turn
            log.warning("could not post to ticket %s: %r", thread, exc, extra=turn_fields(turn))

    # -- after a failed turn ----------------------------------------------------------------------

    async def escalate(self, turn: Turn, reply: Reply) -> str | None:
        """Keep the run of failed answers; returns "failures" when the conversation must be
        handed off now because answers failed `after_failures` times in a row."""
        limit = self._settings.after_failures
        # The run of failures is kept only where it can lead somewhere: a limit and a desk.
        if turn.command in DESK_COMMANDS or not limit or self._desk_of(turn) is None:
            return None
        if reply.outcome is Outcome.ANSWERED:
            await self._tally(self.store.answered(turn.key), turn)
            return None
        if reply.outcome is not Outcome.FAILED or reply.intent == HANDOFF:
            return None
        failures = await self.store.failed(turn.key)
        if failures < limit or await self.store.ticket(turn.key) is not None:
            return None
        log.info("%s failed answers in a row: handing off", failures, extra=turn_fields(turn))
        return "failures"

    @staticmethod
    async def _tally(update: Awaitable[None], turn: Turn) -> None:
        """Figures are worth a log line, not a failed turn."""
        try:
            await update
        except StoreUnavailable as exc:
            log.warning("could not update the figures: %s", exc, extra=turn_fields(turn))
