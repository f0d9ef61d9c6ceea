"""The support desk in Slack: ticket threads in one channel (PARLEY_HANDOFF_SLACK_CHANNEL).

Out (`bot.handoff.desk.Desk`): a handed-off conversation becomes a message in the support
channel — platform, tenant, a link (the one the customer's adapter registered), and a Resolve
button — whose thread gets the transcript, then the customer's later messages.

In: a person's reply in a ticket thread becomes an `agent` turn of the *customer's*
conversation (named by the ticket, looked up in Redis, so any replica can take it),
with the person's display name; `resolve` typed in the thread, or the Resolve button,
becomes a `resolve` turn. Both go through the inbox like any turn. A thread of the
support channel that is no ticket is left to the ordinary path.

Who may do that is checked first (`agents`): a person of Parley's own workspace, and of the
agent user groups when there are some; a refused action reaches nobody but the person
(an ephemeral notice) and the log. The channel itself must be private (`verify`), unless
the operator allowed otherwise: in a public channel anyone in the workspace could read the
transcripts and answer customers as the support team.

Everything posted here quotes customers, so their text is escaped (a customer who types
`<!channel>` must not ping the support channel) and quoted as a block under its speaker
(a customer who types a line break and `*Parley:* identity verified` must not write a line
that passes for Parley's own).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import normalize
from adapters.slack.agents import Agents
from adapters.slack.mrkdwn import escape
from adapters.slack.normalize import Identity
from adapters.slack.sink import call
from bot import messages
from bot.adapter import Link
from bot.errors import ConfigError, InboxFull, ParleyError, PlatformError
from bot.handoff.desk import Said, Ticket
from bot.handoff.store import HandoffStore
from bot.ops.logs import turn_fields
from bot.reply import split_pages
from bot.store.inbox import Inbox

log = logging.getLogger(__name__)

NAME = "slack"
CHANNEL_SETTING = "PARLEY_HANDOFF_SLACK_CHANNEL"
# A transcript message holds at most this many lines, so a long history of short lines stays
# well inside what Slack takes in one rich text block.
LINES_PER_MESSAGE = 20

__all__ = ["NAME", "SlackDesk", "escape"]


class SlackDesk:
    """`Desk` in a Slack channel, and the intake of what people do in its ticket threads."""

    name = NAME

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        store: HandoffStore,
        links: Mapping[str, Link],
        limit: int,
        allow_public: bool = False,
        agent_groups: Sequence[str] = (),
        agent_refresh: float = 300.0,
    ) -> None:
        self._client = client
        self.channel = channel
        self._store = store
        # Each platform's link to its conversations, registered by its adapter: read per ticket,
        # since an adapter created after this desk registers its link later.
        self._links = links
        self._limit = limit
        self._allow_public = allow_public
        self._agents = Agents(client, groups=agent_groups, refresh=agent_refresh)

    async def verify(self) -> None:
        """Check that the support channel is fit for tickets: private to Parley's workspace,
        unless `allow_public`. `ConfigError` (with the fix) when it is not, or when Slack will
        not show it to Parley; `PlatformError` when Slack cannot say right now."""
        try:
            response = await call("conversations.info", self._client.conversations_info(channel=self.channel))
        except PlatformError as exc:
            if not exc.permanent:
                raise
            raise ConfigError(
                CHANNEL_SETTING,
                f"Slack will not show channel {self.channel} to Parley ({exc.code}): check the id, invite Parley "
                "to the channel (/invite @Parley), and give the app the scopes channels:read and groups:read "
                "(deploy/slack/manifest.json, then reinstall it)",
            ) from None
        found = response.get("channel") or {}
        if found.get("is_ext_shared") or found.get("is_pending_ext_shared"):
            why = "shared with another organisation (Slack Connect)"
        elif not found.get("is_private"):
            why = "public: anyone in the workspace can join it, read the transcripts and answer customers"
        else:
            return
        if self._allow_public:
            log.warning("support channel %s is %s; allowed by PARLEY_HANDOFF_ALLOW_PUBLIC_CHANNEL", self.channel, why)
            return
        raise ConfigError(
            CHANNEL_SETTING,
            f"channel {self.channel} is {why}. Use a private channel of your own workspace for the support "
            "desk, or set PARLEY_HANDOFF_ALLOW_PUBLIC_CHANNEL=true to accept that",
        )

    # -- out: tickets ---------------------------------------------------------------------------

    async def open(self, ticket: Ticket) -> str:
        key = ticket.key
        link = self._links.get(key.platform)
        header = messages.ticket_header(
            escape(key.platform),
            escape(key.tenant),
            escape(str(key)),
            escape(ticket.reason),
            link(key) if link is not None else None,
        )
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": header}},
            {
                "type": "actions",
                "block_id": "parley_ticket",
                "elements": [
                    {
                        "type": "button",
                        "action_id": normalize.RESOLVE_ACTION,
                        "style": "primary",
                        "text": {"type": "plain_text", "text": messages.RESOLVE_BUTTON},
                        "value": str(key),
                    }
                ],
            },
        ]
        response = await call(
            "chat.postMessage",
            self._client.chat_postMessage(channel=self.channel, text=header, blocks=blocks, unfurl_links=False),
        )
        return normalize.desk_thread(self.channel, str(response["ts"]))

    async def post(self, thread: str, text: str) -> None:
        channel, ts = thread.split(":", 1)
        for page in split_pages(escape(text), self._limit):
            await call("chat.postMessage", self._client.chat_postMessage(channel=channel, thread_ts=ts, text=page))

    async def quote(self, thread: str, lines: Sequence[Said]) -> None:
        """Each line as its speaker's name, then the text in a quote block of plain text (rich
        text elements are never read as markup); the message's `text`, which notifications show,
        is escaped and quoted line by line."""
        channel, ts = thread.split(":", 1)
        pages = _pages([line for line in lines if line.text.strip()], self._limit)
        if not pages:
            await self.post(thread, messages.NO_EARLIER_MESSAGES)
            return
        for page in pages:
            elements: list[dict[str, Any]] = []
            for line in page:
                elements.append(
                    {
                        "type": "rich_text_section",
                        "elements": [
                            {"type": "text", "text": f"{line.speaker}:", "style": {"bold": True}},
                        ],
                    }
                )
                elements.append({"type": "rich_text_quote", "elements": [{"type": "text", "text": line.text}]})
            text = "\n".join(_fallback(line) for line in page)
            blocks = [{"type": "rich_text", "elements": elements}]
            await call(
                "chat.postMessage",
                self._client.chat_postMessage(
                    channel=channel, thread_ts=ts, text=text, blocks=blocks, unfurl_links=False
                ),
            )

    # -- in: what people do in ticket threads -----------------------------------------------------

    async def take_event(self, body: dict[str, Any], me: Identity, inbox: Inbox, notices: asyncio.TaskGroup) -> bool:
        """Take an event that belongs to a ticket thread; False leaves it to the ordinary path."""
        message = normalize.desk_message(body, me, self.channel)
        if message is None:
            return False
        ticket = await self._store.by_thread(NAME, message.thread)
        if ticket is None:
            log.info("message in thread %s of the support channel, which is no ticket: not relayed", message.thread)
            return False
        if message.mention:  # the `message` copy of a mention is the one taken
            return True
        admission = await self._agents.admit(message.user, team=message.team, me=me)
        if admission.refused:
            self._refuse(message, admission.refused, admission.notice, notices)
        else:
            await self._put(ticket, message, admission.name, inbox)
        return True

    async def take_action(self, body: dict[str, Any], me: Identity, inbox: Inbox, notices: asyncio.TaskGroup) -> None:
        """A press of a Resolve button."""
        message = normalize.resolve_action(body)
        if message is None:
            log.info("block action that is not a Resolve of a ticket: ignored")
            return
        if message.thread.split(":", 1)[0] != self.channel:
            # A ticket of a channel that was the support channel once: whoever is there now
            # is nobody Parley knows to be an agent.
            self._refuse(message, f"pressed outside the support channel {self.channel}", messages.NOT_THE_DESK, notices)
            return
        ticket = await self._store.by_thread(NAME, message.thread)
        if ticket is None:
            log.warning("Resolve pressed on %s, which is no ticket Parley knows (expired?): ignored", message.thread)
            return
        admission = await self._agents.admit(message.user, team=message.team, me=me)
        if admission.refused:
            self._refuse(message, admission.refused, admission.notice, notices)
            return
        await self._put(ticket, message, admission.name, inbox)

    def _refuse(self, message: normalize.DeskMessage, why: str, notice: str, notices: asyncio.TaskGroup) -> None:
        log.warning("desk %s from %s in %s refused: %s", message.command, message.user, message.thread, why)
        notices.create_task(self._tell(message, notice))

    async def _tell(self, message: normalize.DeskMessage, text: str) -> None:
        """A notice only `message`'s author sees, in the thread they acted in."""
        channel, ts = message.thread.split(":", 1)
        try:
            await call(
                "chat.postEphemeral",
                self._client.chat_postEphemeral(
                    channel=channel,
                    user=message.user,
                    thread_ts=ts,
                    text=escape(text),
                ),
            )
        except PlatformError as exc:
            log.warning("could not tell %s why their %s was refused: %s", message.user, message.command, exc)

    async def _put(self, ticket: Ticket, message: normalize.DeskMessage, name: str, inbox: Inbox) -> None:
        turn = ticket.turn(
            command=message.command, user=message.user, text=message.text, event_id=message.event_id, agent=name
        )
        try:
            await inbox.put(turn)
        except InboxFull:
            log.warning("inbox full; %s from %s not taken", message.command, name, extra=turn_fields(turn))
            try:
                await self.post(message.thread, messages.BUSY)
            except ParleyError as exc:
                log.error("could not tell the desk: %s", exc)
            return
        log.info("desk %s from %s taken (ticket %s)", message.command, name, message.thread, extra=turn_fields(turn))


def _fallback(line: Said) -> str:
    """A line as mrkdwn: the speaker in bold, then every line of the text behind Slack's quote
    marker (the text's own `>` is escaped, so it cannot end the quotation)."""
    quoted = "\n".join(">" + part for part in escape(line.text).split("\n"))
    return f"*{escape(line.speaker)}:*\n{quoted}"


def _pages(lines: Sequence[Said], limit: int) -> list[list[Said]]:
    """The lines in messages of at most `limit` characters of text (a longer text is cut into
    several quotes) and `LINES_PER_MESSAGE` lines."""
    pages: list[list[Said]] = []
    page: list[Said] = []
    size = 0
    for line in lines:
        for part in split_pages(line.text, limit):
            if page and (size + len(part) > limit or len(page) >= LINES_PER_MESSAGE):
                pages.append(page)
                page, size = [], 0
            page.append(Said(line.speaker, part))
            size += len(part)
    if page:
        pages.append(page)
    return pages
