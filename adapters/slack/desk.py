"""The support desk in Slack: ticket threads in support channels.

Where: a conversation's tickets open in its profile's `handoff_channel` (`bot.tenants`), else in
the deployment's default channel (PARLEY_HANDOFF_SLACK_CHANNEL). With one workspace every desk
channel is in it; with many (SLACK_CLIENT_ID) each workspace (each tenant) names its own, in its
own profiles, and a ticket of tenant T opens in T's channel with T's installed token. Only a
Slack conversation belongs to a workspace, so with many workspaces only Slack conversations have
a desk. A ticket's thread id says where it is: `channel:ts` with one workspace (as ever),
`workspace:channel:ts` with many (`Place`), so that any replica posts to it with the right
token, and a reply counts only from the workspace the ticket is in.

Out (`bot.handoff.desk.Desk`): a handed-off conversation becomes a message in the support
channel — platform, tenant, a link (the one the customer's adapter registered), and a Resolve
button — whose thread gets the transcript, then the customer's later messages.

In: a person's reply in a ticket thread becomes an `agent` turn of the *customer's*
conversation (named by the ticket, looked up in Redis, so any replica can take it),
with the person's display name; `resolve` typed in the thread, or the Resolve button,
becomes a `resolve` turn. Both go through the inbox like any turn. The desk channels are the
default and those the profiles in force name (of the event's workspace, with many); a thread
of one that is no ticket is left to the ordinary path.

Who may do that is checked first (`agents`, one memory per workspace): a person of the
workspace (or its Grid organisation), and of the agent user groups when there are some; a
refused action reaches nobody but the person (an ephemeral notice) and the log. Each channel
must be private (`ChannelChecks`), unless the operator allowed otherwise: in a public channel
anyone in the workspace could read the transcripts and answer customers as the support team.
The default is checked at start-up (`verify`), every other channel before its first ticket
(or the first reply a replica takes there); the answer is kept (`REFUSED_FOR`).

Everything posted here quotes customers, so their text is escaped (a customer who types
`<!channel>` must not ping the support channel) and quoted as a block under its speaker
(a customer who types a line break and `*Parley:* identity verified` must not write a line
that passes for Parley's own).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import normalize
from adapters.slack.agents import Agents
from adapters.slack.mrkdwn import escape
from adapters.slack.normalize import Identity
from adapters.slack.sink import call
from bot import messages
from bot.adapter import Link
from bot.errors import DeskRefused, InboxFull, ParleyError, PlatformError
from bot.handoff.desk import Said, Ticket
from bot.handoff.store import HandoffStore
from bot.ops.logs import turn_fields
from bot.reply import split_pages
from bot.store.inbox import Inbox
from bot.turns import ConversationKey

log = logging.getLogger(__name__)

NAME = "slack"
CHANNEL_SETTING = "PARLEY_HANDOFF_SLACK_CHANNEL"
PROFILE_FIELD = "handoff_channel"
# A transcript message holds at most this many lines, so a long history of short lines stays
# well inside what Slack takes in one rich text block.
LINES_PER_MESSAGE = 20
# Seconds a channel found unfit stays refused before it is asked about again: long enough that
# a refused channel costs no call per handoff, short enough that a fix (Parley invited, the
# channel made private) counts without a restart.
REFUSED_FOR = 600.0

__all__ = ["NAME", "ChannelChecks", "Place", "SlackDesk", "escape"]


@dataclass(frozen=True, slots=True)
class Place:
    """A desk channel of a workspace ("": the one workspace of a single-workspace Parley)."""

    workspace: str
    channel: str

    def __str__(self) -> str:
        return f"{self.channel} (workspace {self.workspace})" if self.workspace else self.channel

    def thread(self, ts: str) -> str:
        """The id of the ticket thread at `ts` here."""
        thread = normalize.desk_thread(self.channel, ts)
        return f"{self.workspace}:{thread}" if self.workspace else thread

    @classmethod
    def of_thread(cls, thread: str) -> tuple[Place, str]:
        """Where a ticket thread is, and its ts."""
        *workspace, channel, ts = thread.rsplit(":", 2)
        return cls(workspace[0] if workspace else "", channel), ts


def _placed(message: normalize.DeskMessage, workspace: str) -> tuple[Place, normalize.DeskMessage]:
    """Where a desk message is, and the message naming its ticket thread by the thread's id."""
    channel, ts = message.thread.split(":", 1)
    place = Place(workspace, channel)
    return place, replace(message, thread=place.thread(ts))


class ChannelChecks:
    """Whether desk channels are fit for tickets: private to their workspace (no Slack Connect),
    unless `allow_public`. Asked of Slack (conversations.info) once per channel and workspace and
    kept: a fit channel for good, as the default always was; an unfit one for `REFUSED_FOR`
    seconds. What Slack cannot say right now is not kept."""

    def __init__(
        self,
        client_for: Callable[[str], AsyncWebClient],
        *,
        allow_public: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_for = client_for
        self._allow_public = allow_public
        self._clock = clock
        self._fit: set[Place] = set()
        self._unfit: dict[Place, tuple[float, DeskRefused]] = {}

    def trust(self, place: Place) -> None:
        """Take `place` as fit without asking (a default its adapter checks before offering the desk)."""
        self._fit.add(place)

    def forget(self, place: Place) -> None:
        self._fit.discard(place)
        self._unfit.pop(place, None)

    def refusal(self, place: Place) -> DeskRefused | None:
        """Why `place` is refused, while that is known; None when fit or not asked yet."""
        if (unfit := self._unfit.get(place)) is None:
            return None
        if self._clock() >= unfit[0]:
            del self._unfit[place]  # asked again at its next use
            return None
        return unfit[1]

    async def check(self, place: Place, setting: str) -> None:
        """Return once `place` is known fit; `DeskRefused` (with the fix) when it is not, or when
        Slack will not show it to Parley; `PlatformError` when Slack cannot say right now."""
        if place in self._fit:
            return
        if (refused := self.refusal(place)) is not None:
            raise refused
        try:
            await self._ask(place, setting)
        except DeskRefused as exc:
            self._unfit[place] = (self._clock() + REFUSED_FOR, exc)
            raise
        self._fit.add(place)

    async def _ask(self, place: Place, setting: str) -> None:
        client = self._client_for(place.workspace)
        try:
            response = await call("conversations.info", client.conversations_info(channel=place.channel))
        except PlatformError as exc:
            if not exc.permanent:
                raise
            raise DeskRefused(
                setting,
                f"Slack will not show channel {place} to Parley ({exc.code}): check the id, invite Parley "
                "to the channel (/invite @Parley), and give the app the scopes channels:read and groups:read "
                "(deploy/slack/manifest.json, then reinstall it)",
                channel=place.channel,
            ) from None
        found = response.get("channel") or {}
        if found.get("is_ext_shared") or found.get("is_pending_ext_shared"):
            why = "shared with another organisation (Slack Connect)"
        elif not found.get("is_private"):
            why = "public: anyone in the workspace can join it, read the transcripts and answer customers"
        else:
            return
        if self._allow_public:
            log.warning("support channel %s is %s; allowed by PARLEY_HANDOFF_ALLOW_PUBLIC_CHANNEL", place, why)
            return
        raise DeskRefused(
            setting,
            f"channel {place} is {why}. Use a private channel of your own workspace for the support "
            "desk, or set PARLEY_HANDOFF_ALLOW_PUBLIC_CHANNEL=true to accept that",
            channel=place.channel,
        )


class SlackDesk:
    """`Desk` in Slack channels, and the intake of what people do in its ticket threads."""

    name = NAME

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str | None,
        store: HandoffStore,
        links: Mapping[str, Link],
        limit: int,
        allow_public: bool = False,
        agent_groups: Sequence[str] = (),
        agent_refresh: float = 300.0,
        client_for: Callable[[str], AsyncWebClient] | None = None,
        named: Callable[[str], Collection[str]] = lambda tenant: (),
    ) -> None:
        self._client = client
        # Many workspaces: each one's client (its installation's token, read when a call starts);
        # None: one workspace, `client`'s.
        self._client_for = client_for
        self.channel = channel  # the default desk channel (PARLEY_HANDOFF_SLACK_CHANNEL), if any
        # The desk channels the profiles in force name, by tenant ("": every tenant's).
        self._named = named
        self._store = store
        # Each platform's link to its conversations, registered by its adapter: read per ticket,
        # since an adapter created after this desk registers its link later.
        self._links = links
        self._limit = limit
        self._checks = ChannelChecks(self._client_of, allow_public=allow_public)
        if channel is not None:
            self._checks.trust(Place("", channel))  # until `verify`: its adapter offers the desk after it
        self._agent_groups = tuple(agent_groups)
        self._agent_refresh = agent_refresh
        self._agents: dict[str, Agents] = {}  # by workspace: whose people, whose groups

    def _client_of(self, workspace: str) -> AsyncWebClient:
        return self._client if self._client_for is None else self._client_for(workspace)

    def _agents_of(self, workspace: str) -> Agents:
        if (agents := self._agents.get(workspace)) is None:
            agents = self._agents[workspace] = Agents(
                lambda: self._client_of(workspace), groups=self._agent_groups, refresh=self._agent_refresh
            )
        return agents

    async def verify(self) -> None:
        """Check the default channel (at start-up, before the desk is offered): `DeskRefused`
        (with the fix) when it is unfit, `PlatformError` when Slack cannot say right now."""
        if self.channel is None:
            return
        place = Place("", self.channel)
        self._checks.forget(place)
        await self._checks.check(place, CHANNEL_SETTING)

    def _place(self, key: ConversationKey | None, target: str) -> Place | None:
        """Where a ticket of `key` goes: `target`, else the default; with many workspaces, in
        the conversation's own (a Slack conversation's tenant), and nowhere for the others."""
        channel = target or self.channel
        if not channel:
            return None
        if self._client_for is None:
            return Place("", channel)
        if key is None or key.platform != normalize.PLATFORM:
            return None
        return Place(key.tenant, channel)

    def reaches(self, key: ConversationKey | None, target: str) -> bool:
        place = self._place(key, target)
        return place is not None and self._checks.refusal(place) is None

    def _setting(self, place: Place) -> str:
        return CHANNEL_SETTING if place.channel == self.channel and not place.workspace else PROFILE_FIELD

    def _workspace_of(self, body: dict[str, Any], me: Identity) -> str:
        """The workspace (the tenant: `normalize.tenant_of`) an event or press came from; ""
        with one workspace."""
        if self._client_for is None:
            return ""
        team = body.get("team_id") or (body.get("team") or {}).get("id") or me.team_id
        return normalize.tenant_of(body, str(team))

    def _is_desk(self, workspace: str, channel: str) -> bool:
        return bool(channel) and (channel == self.channel or channel in self._named(workspace))

    # -- out: tickets ---------------------------------------------------------------------------

    async def open(self, ticket: Ticket, target: str = "") -> str:
        key = ticket.key
        place = self._place(key, target)
        if place is None:
            raise DeskRefused(PROFILE_FIELD, f"no desk channel in the workspace of conversation {key}", channel=target)
        await self._checks.check(place, self._setting(place))
        link = self._links.get(key.platform)
        header = messages.ticket_header(
            escape(key.platform),
            escape(key.tenant),
            escape(str(key)),
            escape(ticket.reason),
            link(key) if link is not None else None,
        )
        client = self._client_of(place.workspace)
        response = await call(
            "chat.postMessage",
            client.chat_postMessage(
                channel=place.channel, text=header, blocks=_ticket_blocks(header, key), unfurl_links=False
            ),
        )
        return place.thread(str(response["ts"]))

    async def post(self, thread: str, text: str) -> None:
        place, ts = Place.of_thread(thread)
        client = self._client_of(place.workspace)
        for page in split_pages(escape(text), self._limit):
            await call("chat.postMessage", client.chat_postMessage(channel=place.channel, thread_ts=ts, text=page))

    async def quote(self, thread: str, lines: Sequence[Said]) -> None:
        """Each line as its speaker's name, then the text in a quote block of plain text (rich
        text elements are never read as markup); the message's `text`, which notifications show,
        is escaped and quoted line by line."""
        place, ts = Place.of_thread(thread)
        pages = _pages([line for line in lines if line.text.strip()], self._limit)
        if not pages:
            await self.post(thread, messages.NO_EARLIER_MESSAGES)
            return
        client = self._client_of(place.workspace)
        for page in pages:
            text = "\n".join(_fallback(line) for line in page)
            blocks = [{"type": "rich_text", "elements": _quoted(page)}]
            await call(
                "chat.postMessage",
                client.chat_postMessage(
                    channel=place.channel, thread_ts=ts, text=text, blocks=blocks, unfurl_links=False
                ),
            )

    # -- in: what people do in ticket threads -----------------------------------------------------

    async def take_event(self, body: dict[str, Any], me: Identity, inbox: Inbox, notices: asyncio.TaskGroup) -> bool:
        """Take an event that belongs to a ticket thread; False leaves it to the ordinary path."""
        workspace = self._workspace_of(body, me)
        channel = str((body.get("event") or {}).get("channel") or "")
        if not self._is_desk(workspace, channel) or (found := normalize.desk_message(body, me, channel)) is None:
            return False
        place, message = _placed(found, workspace)
        ticket = await self._store.by_thread(NAME, message.thread)
        if ticket is None:
            log.info("message in thread %s of the support channel, which is no ticket: not relayed", message.thread)
            return False
        if message.mention:  # the `message` copy of a mention is the one taken
            return True
        if await self._still_a_desk(place, message, notices):
            await self._admit_and_put(ticket, message, workspace, me, inbox, notices)
        return True

    async def take_action(self, body: dict[str, Any], me: Identity, inbox: Inbox, notices: asyncio.TaskGroup) -> None:
        """A press of a Resolve button."""
        found = normalize.resolve_action(body)
        if found is None:
            log.info("block action that is not a Resolve of a ticket: ignored")
            return
        workspace = self._workspace_of(body, me)
        place, message = _placed(found, workspace)
        if not self._is_desk(workspace, place.channel):
            # A ticket of a channel that was a support channel once: whoever is there now
            # is nobody Parley knows to be an agent.
            desks = sorted({*([self.channel] if self.channel else []), *self._named(workspace)})
            why = f"pressed outside the support channel {', '.join(desks) or '(none)'}"
            self._refuse(message, why, messages.NOT_THE_DESK, notices)
            return
        ticket = await self._store.by_thread(NAME, message.thread)
        if ticket is None:
            log.warning("Resolve pressed on %s, which is no ticket Parley knows (expired?): ignored", message.thread)
            return
        if await self._still_a_desk(place, message, notices):
            await self._admit_and_put(ticket, message, workspace, me, inbox, notices)

    async def _still_a_desk(self, place: Place, message: normalize.DeskMessage, notices: asyncio.TaskGroup) -> bool:
        """Whether `place` is fit for tickets now (asked of Slack once per replica and channel):
        what people do in an unfit one reaches no customer."""
        try:
            await self._checks.check(place, self._setting(place))
        except DeskRefused as exc:
            self._refuse(message, f"the channel is not fit for tickets: {exc.reason}", messages.NOT_THE_DESK, notices)
            return False
        except PlatformError as exc:
            why = f"conversations.info failed ({exc.code or exc.status or exc})"
            self._refuse(message, why, messages.AGENT_UNCHECKED, notices)
            return False
        return True

    async def _admit_and_put(
        self,
        ticket: Ticket,
        message: normalize.DeskMessage,
        workspace: str,
        me: Identity,
        inbox: Inbox,
        notices: asyncio.TaskGroup,
    ) -> None:
        admission = await self._agents_of(workspace).admit(message.user, team=message.team, me=me)
        if admission.refused:
            self._refuse(message, admission.refused, admission.notice, notices)
        else:
            await self._put(ticket, message, admission.name, inbox)

    def _refuse(self, message: normalize.DeskMessage, why: str, notice: str, notices: asyncio.TaskGroup) -> None:
        log.warning("desk %s from %s in %s refused: %s", message.command, message.user, message.thread, why)
        notices.create_task(self._tell(message, notice))

    async def _tell(self, message: normalize.DeskMessage, text: str) -> None:
        """A notice only `message`'s author sees, in the thread they acted in."""
        place, ts = Place.of_thread(message.thread)
        try:
            await call(
                "chat.postEphemeral",
                self._client_of(place.workspace).chat_postEphemeral(
                    channel=place.channel,
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


def _ticket_blocks(header: str, key: ConversationKey) -> list[dict[str, Any]]:
    """A ticket's head: the header, and the Resolve button (its value names the conversation)."""
    button = {
        "type": "button",
        "action_id": normalize.RESOLVE_ACTION,
        "style": "primary",
        "text": {"type": "plain_text", "text": messages.RESOLVE_BUTTON},
        "value": str(key),
    }
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": header}},
        {"type": "actions", "block_id": "parley_ticket", "elements": [button]},
    ]


def _quoted(page: Sequence[Said]) -> list[dict[str, Any]]:
    """Rich text elements: each speaker in bold, then their text as a quote of plain text."""
    elements: list[dict[str, Any]] = []
    for line in page:
        bold = {"type": "text", "text": f"{line.speaker}:", "style": {"bold": True}}
        elements.append({"type": "rich_text_section", "elements": [bold]})
        elements.append({"type": "rich_text_quote", "elements": [{"type": "text", "text": line.text}]})
    return elements


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
