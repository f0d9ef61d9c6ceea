"""Slack's events, slash commands and button presses (Resolve, Confirm / Cancel, 👍/👎), turned into turns in the inbox.

This is the request path: it does only what must happen before Slack is acknowledged
(turn the payload into a `Turn`, look up or remember the thread, put the turn into the
inbox). Bolt acks when a listener returns, so a turn is acknowledged only once it is
safely in the inbox. Notices (busy, no text) are posted by tasks of the adapter's
`notices` group, never from the request path and never fire-and-forget.

Two things are answered here rather than by the dialogue, because only the adapter knows them:
`help` (and `/parley help`), which says what this deployment offers (`messages.slack_help`), and
`summarise` in an assistant-pane thread, which reads the channel in view (`summaries`). Each
conversation a person's turn is taken into is recorded for their Home tab (`recents`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import normalize
from adapters.slack.desk import SlackDesk
from adapters.slack.mrkdwn import escape
from adapters.slack.normalize import Addressed, Identity, Incoming
from adapters.slack.recents import Recents
from adapters.slack.shortcuts import Shortcuts
from adapters.slack.summaries import ChannelSummary
from adapters.slack.threads import Pane, ThreadMemory
from bot import messages
from bot.errors import InboxFull, InboxUnavailable, ParleyError, StoreUnavailable
from bot.ops.logs import turn_fields
from bot.ops.stats import AnswerIndex
from bot.reply import ReplySink
from bot.store.dedupe import Deduper
from bot.store.inbox import Inbox
from bot.tenants import ProfileSource
from bot.turns import ASK_PERSON, Turn

log = logging.getLogger(__name__)


class SlackIntake:
    """The listeners bolt dispatches to, for one run of the adapter (its inbox and its notice
    tasks are fixed for that run, and so is the bot's identity in one workspace; with many,
    it is the one bolt's authorisation found for the event's workspace)."""

    def __init__(
        self,
        *,
        identity: Identity | None,
        inbox: Inbox,
        notices: asyncio.TaskGroup,
        threads: ThreadMemory,
        deduper: Deduper,
        answers: AnswerIndex | None,
        open_desk: Callable[[], SlackDesk | None],
        sink_for: Callable[[Turn], ReplySink],
        profiles: ProfileSource,
        client_for: Callable[[str], AsyncWebClient],
        recents: Recents,
        help_text: str,
    ) -> None:
        self._me = identity
        self._profiles = profiles  # a channel's mention rule
        self._inbox = inbox
        self._notices = notices
        self._threads = threads
        self._deduper = deduper
        self._answers = answers
        self._open_desk = open_desk  # the support desk while it is open, else None
        self._sink_for = sink_for  # for notices
        self._client_for = client_for  # the workspace's Web API client
        self._recents = recents  # each person's recent conversations, for their Home tab
        self._help = help_text  # `help`, as this deployment offers it
        self._summary = ChannelSummary(inbox=inbox, deduper=deduper, client_for=client_for, sink_for=sink_for)

    def _identity(self, context: AsyncBoltContext) -> Identity:
        if self._me is not None:
            return self._me
        return Identity(
            user_id=context.bot_user_id or "",
            bot_id=context.bot_id or "",
            team_id=context.team_id or "",
            enterprise_id=context.enterprise_id or "",
        )

    def shortcuts(self) -> Shortcuts:
        """The message shortcuts' listeners, which take their turns into this run's inbox."""
        return Shortcuts(
            identity=self._identity,
            inbox=self._inbox,
            threads=self._threads,
            notices=self._notices,
            client_for=self._client_for,
        )

    async def event(self, body: dict[str, Any], context: AsyncBoltContext) -> None:
        """Every event: a ticket thread's, a 👍/👎 vote, or a message for Parley (`normalize` decides)."""
        me = self._identity(context)
        desk = self._open_desk()
        if desk is not None and await desk.take_event(body, me, self._inbox, self._notices):
            return  # a person's reply or resolve in a ticket thread
        if (vote := normalize.vote_of(body, me)) is not None:
            await self._vote(vote)
            return
        incoming = normalize.from_event(body, me, answers_all=self._answers_all)
        if incoming is not None:
            await self._take(incoming, me)

    def _answers_all(self, tenant: str, channel: str) -> bool:
        return self._profiles.profile(tenant, channel).mention_rule == "always"

    async def command(self, body: dict[str, Any], ack: Any) -> None:
        if (body.get("text") or "").strip().lower() == "resolve":
            # A slash command carries no thread_ts: it cannot name the ticket it was typed in.
            await ack(text=escape(messages.RESOLVE_IN_THREAD), response_type="ephemeral")
            return
        turn = normalize.from_command(body)
        if turn.command == "help":
            # Through the command's response_url, once acknowledged (its sink: `sink_for`).
            self._notices.create_task(self._notify(turn, self._help, once=False))
            await ack()
            return
        try:
            await self._inbox.put(turn)
        except (InboxFull, InboxUnavailable) as exc:
            # Slack never redelivers a slash command: an error status would only show the
            # user "dispatch_failed", so it is refused with words instead.
            log.warning(
                "inbox %s; slash command refused",
                "full" if isinstance(exc, InboxFull) else "unreachable",
                extra=turn_fields(turn),
            )
            await ack(text=escape(messages.BUSY), response_type="ephemeral")
            return
        await ack()

    async def resolve(self, body: dict[str, Any], ack: Any, context: AsyncBoltContext) -> None:
        """A press of a ticket's Resolve button."""
        desk = self._open_desk()
        if desk is not None:
            await desk.take_action(body, self._identity(context), self._inbox, self._notices)
        else:
            log.warning("Resolve pressed while the support desk is off: ignored")
        await ack()

    async def press(self, body: dict[str, Any], ack: Any, context: AsyncBoltContext) -> None:
        """A press of a button that asks something of its conversation: a write action's Confirm
        or Cancel (a `choice` turn), or "Talk to a person" (a `handoff` turn)."""
        me = self._identity(context)
        turn = normalize.choice_of(body, me) or normalize.person_of(body, me)
        if turn is None:
            log.warning("a button press with a value Parley never put on a button: ignored")
        else:
            try:
                await self._inbox.put(turn)
                pressed = "handoff" if turn.command == ASK_PERSON else turn.text  # not the words it stands for
                log.info("slack %s pressed", pressed, extra=turn_fields(turn))
            except (InboxFull, InboxUnavailable) as exc:
                # Slack never redelivers a press: the user is told to press again later.
                log.warning("inbox %r; a button press was refused", exc, extra=turn_fields(turn))
                self._notices.create_task(self._notify(turn, messages.BUSY, once=False))
        await ack()

    async def feedback(self, body: dict[str, Any], ack: Any, context: AsyncBoltContext) -> None:
        """A press of an answer's 👍/👎 buttons: the same vote as a reaction on that message."""
        vote = normalize.feedback_of(body, self._identity(context))
        try:
            if vote is None:
                log.warning("a feedback press without a vote Parley made: ignored")
            else:
                await self._vote(vote)
        except (InboxUnavailable, StoreUnavailable) as exc:
            # Slack never redelivers a press (an error status would only show the user a warning sign).
            log.warning("Redis unreachable (%r); a feedback press was dropped", exc)
        await ack()

    async def _vote(self, vote: normalize.Vote) -> None:
        """A 👍/👎 reaction or button: a `feedback` turn of the conversation the answer belongs to."""
        answered = await self._answers.find("slack", vote.team, vote.message) if self._answers is not None else None
        if answered is None:
            log.info("%s %s on %s, which is no answer Parley remembers: ignored", vote.vote, vote.via, vote.message)
            return
        turn = answered.vote(user=vote.user, vote=vote.vote, event_id=vote.event_id)
        try:
            await self._inbox.put(turn)
        except InboxFull:
            log.warning("inbox full; a vote was dropped", extra=turn_fields(turn))

    async def _take(self, incoming: Incoming, me: Identity) -> None:
        turn = incoming.turn
        if incoming.route is Addressed.THREAD and not await self._threads.joined(turn.key):
            return
        pane: Pane | None = None
        if incoming.route is not Addressed.DIRECT:
            await self._threads.join(turn.key)  # joins on a mention, refreshes the expiry on a reply
        elif turn.thread and (pane := await self._threads.pane(turn.key, asking=_asks(turn))) is not None:
            turn = _in_pane(turn, pane)
        if turn.command == "help":
            self._notices.create_task(self._notify(turn, self._help, once=True))
            return
        if pane is not None and normalize.pane_command_of(turn.text) is not None:
            self._notices.create_task(self._summary.summarise(turn, pane.viewing, me.user_id))
            await self._recents.add(turn)
            return
        if incoming.no_text:
            self._notices.create_task(self._notify(turn, messages.NO_TEXT, once=True))
            return
        try:
            await self._inbox.put(turn)
        except InboxFull:
            log.warning("inbox full; the user is asked to retry", extra=turn_fields(turn))
            self._notices.create_task(self._notify(turn, messages.BUSY, once=False))
            return
        # InboxClosed (shutting down) and InboxUnavailable (Redis down) propagate: with
        # process_before_response bolt answers 500 (over Socket Mode: no ack), and Slack
        # delivers the event again later, so the turn is not lost.
        log.info("slack %s taken", incoming.route, extra=turn_fields(turn))
        if turn.command is None:
            await self._recents.add(turn)

    async def _notify(self, turn: Turn, text: str, *, once: bool) -> None:
        """Tell the user something without the dialogue manager; `once` drops Slack's retries."""
        try:
            if once and not await self._deduper.claim(turn):
                return
            await self._sink_for(turn).send(text)
        except ParleyError as exc:
            log.error("could not post a notice: %r", exc, extra=turn_fields(turn))


def _in_pane(turn: Turn, pane: Pane) -> Turn:
    """A question in an assistant-pane thread: its sink shows a status until the answer starts,
    and titles the thread with the first question (a command word is no title)."""
    handle = {**turn.handle, normalize.PANE: "1"}
    if pane.first:
        handle[normalize.TITLE] = turn.text[: normalize.TITLE_CHARS]
    return replace(turn, handle=handle)


def _asks(turn: Turn) -> bool:
    return turn.command is None and bool(turn.text) and normalize.pane_command_of(turn.text) is None
