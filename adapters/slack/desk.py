"""The support desk in Slack: ticket threads in one channel (PARLEY_HANDOFF_SLACK_CHANNEL).

Out (`bot.handoff.Desk`): a handed-off conversation becomes a message in the support
channel — platform, tenant, a link, and a Resolve button — whose thread gets the
transcript, then the customer's later messages.

In: a person's reply in a ticket thread becomes an `agent` turn of the *customer's*
conversation (named by the ticket, looked up in Redis, so any replica can take it),
with the person's display name (users.info, cached); `resolve` typed in the thread, or
the Resolve button, becomes a `resolve` turn. Both go through the inbox like any turn.
A thread of the support channel that is no ticket is left to the ordinary path.

Everything posted here quotes customers, so their text is escaped: a customer who types
`<!channel>` must not ping the support channel.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import normalize
from adapters.slack.normalize import Identity
from adapters.slack.sink import call
from bot import messages
from bot.errors import InboxFull, ParleyError, PlatformError
from bot.handoff import HandoffStore, Ticket, conversation_link
from bot.inbox import Inbox
from bot.logs import turn_fields
from bot.reply import split_pages

log = logging.getLogger(__name__)

NAME = "slack"


def escape(text: str) -> str:
    """Slack's three control characters, so quoted text stays text (no mentions, no links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackDesk:
    """`Desk` in a Slack channel, and the intake of what people do in its ticket threads."""

    name = NAME

    def __init__(
        self, client: AsyncWebClient, *, channel: str, store: HandoffStore, limit: int, max_names: int = 10_000
    ) -> None:
        self._client = client
        self.channel = channel
        self._store = store
        self._limit = limit
        self._names: OrderedDict[str, str] = OrderedDict()
        self._max_names = max_names

    # -- out: tickets ---------------------------------------------------------------------------

    async def open(self, ticket: Ticket) -> str:
        key = ticket.key
        header = messages.ticket_header(key.platform, key.tenant, str(key), ticket.reason, conversation_link(key))
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": header}},
            {"type": "actions", "block_id": "parley_ticket", "elements": [{
                "type": "button", "action_id": normalize.RESOLVE_ACTION, "style": "primary",
                "text": {"type": "plain_text", "text": messages.RESOLVE_BUTTON}, "value": str(key),
            }]},
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

    # -- in: what people do in ticket threads -----------------------------------------------------

    async def take_event(self, body: dict[str, Any], me: Identity, inbox: Inbox) -> bool:
        """Take an event that belongs to a ticket thread; False leaves it to the ordinary path."""
        message = normalize.desk_message(body, me, self.channel)
        if message is None:
            return False
        ticket = await self._store.by_thread(NAME, message.thread)
        if ticket is None:
            log.info("message in thread %s of the support channel, which is no ticket: not relayed", message.thread)
            return False
        if not message.mention:  # the `message` copy of a mention is the one taken
            await self._put(ticket, message, inbox)
        return True

    async def take_action(self, body: dict[str, Any], inbox: Inbox) -> None:
        """A press of a Resolve button."""
        message = normalize.resolve_action(body)
        if message is None:
            log.info("block action that is not a Resolve of a ticket: ignored")
            return
        ticket = await self._store.by_thread(NAME, message.thread)
        if ticket is None:
            log.warning("Resolve pressed on %s, which is no ticket Parley knows (expired?): ignored", message.thread)
            return
        await self._put(ticket, message, inbox)

    async def _put(self, ticket: Ticket, message: normalize.DeskMessage, inbox: Inbox) -> None:
        name = await self.name_of(message.user)
        turn = ticket.turn(command=message.command, user=message.user, text=message.text,
                           event_id=message.event_id, meta={"agent": name})
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

    async def name_of(self, user: str) -> str:
        """A person's display name (users.info, cached); the user id if Slack will not say."""
        if (name := self._names.get(user)) is not None:
            return name
        try:
            response = await call("users.info", self._client.users_info(user=user))
        except PlatformError as exc:
            log.warning("users.info %s failed (%s): the reply is signed with the user id", user, exc.code or exc)
            return user
        found = response.get("user") or {}
        profile = found.get("profile") or {}
        name = profile.get("display_name") or profile.get("real_name") or found.get("real_name") or found.get("name") or user
        self._names[user] = name
        while len(self._names) > self._max_names:
            self._names.popitem(last=False)
        return name
