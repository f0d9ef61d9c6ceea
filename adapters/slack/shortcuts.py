"""Slack's message shortcuts (the "⋯" menu of a message): "Ask Parley about this message" and
"Summarise this thread".

- Ask: the message's text (cleaned as `normalize` cleans an event's) becomes a question of the
  person who used the shortcut, answered in the message's thread, which Parley then joins, as
  if that person had mentioned Parley there. It goes into the inbox before bolt's ack, like every
  other turn, with the trigger id in its event id, so a payload delivered twice is answered once.
- Summarise: the thread is read with `conversations.replies` (one call per page) off the request
  path, by a task of the adapter's `notices` group, and sent as one chat turn asking for a summary
  of its lines, delimited as data, answered in the thread (`summaries`, shared with the assistant
  pane's summary of a channel).

What cannot be done (a message without text, a thread Parley cannot read, Slack's rate limit, a
full inbox) is told to the person alone, with `chat.postEphemeral`, and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import mrkdwn
from adapters.slack.mrkdwn import escape
from adapters.slack.normalize import MENTIONS, PLATFORM, Identity, clean_text, tenant_of
from adapters.slack.sink import call
from adapters.slack.summaries import PAGE, read_pages, refusal, summary_request
from adapters.slack.threads import ThreadMemory
from bot import messages
from bot.errors import InboxFull, InboxUnavailable, ParleyError, PlatformError
from bot.ops.logs import turn_fields
from bot.store.inbox import Inbox
from bot.turns import Turn

log = logging.getLogger(__name__)

ASK, SUMMARISE = "parley_ask_message", "parley_summarise_thread"  # the shortcuts' callback ids


class Shortcuts:
    """The listeners of the two message shortcuts, for one run of the adapter."""

    def __init__(
        self,
        *,
        identity: Callable[[AsyncBoltContext], Identity],
        inbox: Inbox,
        threads: ThreadMemory,
        notices: asyncio.TaskGroup,
        client_for: Callable[[str], AsyncWebClient],
    ) -> None:
        self._identity = identity  # Parley's own user in the payload's workspace
        self._inbox = inbox
        self._threads = threads
        self._notices = notices
        self._client_for = client_for

    def register(self, app: AsyncApp) -> None:
        app.message_shortcut(ASK)(self.ask)
        app.message_shortcut(SUMMARISE)(self.summarise)

    async def ask(self, body: dict[str, Any], ack: Any, context: AsyncBoltContext) -> None:
        """The message as a question, into the inbox before the ack (Slack waits 3 seconds)."""
        me = self._identity(context)
        turn = shortcut_turn(body, me)
        if turn is None:
            log.warning("slack: an Ask shortcut without a channel, user or message: ignored")
        else:
            raw = (body.get("message") or {}).get("text") or ""
            # The people the message mentions: the only mentions the answer may make live.
            mentioned = {MENTIONS: mrkdwn.encode_ids(mrkdwn.mentions_in(raw))}
            turn = replace(turn, text=clean_text(raw, me.user_id), handle=mentioned)
            if not turn.text:
                log.info("slack shortcut on a message without text: told the user", extra=turn_fields(turn))
                self._notices.create_task(self._tell(turn, messages.SHORTCUT_NO_TEXT))
            else:
                await self._put(turn, "ask")
        await ack()

    async def summarise(self, body: dict[str, Any], ack: Any, context: AsyncBoltContext) -> None:
        """Acknowledged at once: reading the thread may take more than the 3 seconds Slack waits."""
        me = self._identity(context)
        turn = shortcut_turn(body, me)
        await ack()
        if turn is None:
            log.warning("slack: a Summarise shortcut without a channel, user or message: ignored")
        else:
            self._notices.create_task(self._summarise(turn, me.user_id))

    async def _summarise(self, turn: Turn, me: str) -> None:
        client = self._client_for(turn.tenant)
        try:
            found, more = await read_pages(
                "conversations.replies",
                lambda cursor: client.conversations_replies(
                    channel=turn.channel, ts=turn.thread, limit=PAGE, cursor=cursor
                ),
            )
        except PlatformError as exc:
            log.warning("slack: could not read thread %s to summarise: %r", turn.key, exc)
            await self._tell(turn, refusal(exc, messages.SUMMARY_UNREADABLE))
            return
        if more:
            # Slack pages a thread oldest first: reading to its end could take many tier-3 calls.
            log.info("slack: thread %s is longer than what is read; its later messages are not", turn.key)
        text = summary_request(found, me, messages.summarise_thread)
        if text is None:
            log.info("slack: thread %s has no text to summarise: told the user", turn.key)
            await self._tell(turn, messages.SUMMARY_NOTHING)
            return
        try:
            await self._put(replace(turn, text=text), "summarise")
        except ParleyError as exc:  # shutting down: this task must not fail the adapter's notices
            log.warning("slack: a Summarise shortcut was dropped: %r", exc, extra=turn_fields(turn))

    async def _put(self, turn: Turn, kind: str) -> None:
        try:
            await self._inbox.put(turn)
        except (InboxFull, InboxUnavailable) as exc:
            # Slack never redelivers a shortcut: the person is told to try again.
            log.warning("inbox %r; a %s shortcut was refused", exc, kind, extra=turn_fields(turn))
            self._notices.create_task(self._tell(turn, messages.BUSY))
            return
        await self._threads.join(turn.key)  # later replies in the thread continue without a mention
        log.info("slack %s shortcut taken", kind, extra=turn_fields(turn))

    async def _tell(self, turn: Turn, text: str) -> None:
        """A line only the person who used the shortcut sees, in the message's thread."""
        try:
            await call(
                "chat.postEphemeral",
                self._client_for(turn.tenant).chat_postEphemeral(
                    channel=turn.channel, user=turn.user, text=escape(text), thread_ts=turn.thread
                ),
            )
        except ParleyError as exc:
            log.warning("slack: could not tell %s about a shortcut: %r", turn.user, exc, extra=turn_fields(turn))


def shortcut_turn(body: dict[str, Any], me: Identity) -> Turn | None:
    """The turn of a `message_action` payload, without its text yet: who used the shortcut, in the
    thread of the message it was used on; None when the payload lacks any of them. Slack never
    retries an interactivity payload; the trigger id names this one use of the shortcut."""
    channel = (body.get("channel") or {}).get("id") or ""
    user = (body.get("user") or {}).get("id") or ""
    message = body.get("message") or {}
    ts = message.get("ts") or ""
    if not (channel and user and ts and isinstance(channel, str) and isinstance(user, str) and isinstance(ts, str)):
        return None
    # The installation that answers (a Grid org's, for an org-wide install), as bolt authorised it.
    tenant = tenant_of(
        body, (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or me.team_id
    )
    return Turn(
        platform=PLATFORM,
        tenant=tenant,
        channel=channel,
        thread=message.get("thread_ts") or ts,
        user=user,
        text="",
        event_id="shortcut:" + (body.get("trigger_id") or f"{channel}:{ts}:{user}:{body.get('action_ts', '')}"),
        reply_to=ts,
        # The user's own workspace, which native streaming names (a Slack Connect guest's is another).
        address={"user_team": (body.get("user") or {}).get("team_id") or tenant},
    )
