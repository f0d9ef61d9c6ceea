"""The web chat's intake: each frame of a conversation that has said hello, into the inbox.

A frame counts against the rate limits (the address's and the visitor's) before anything else
is read from it, then is checked (shape, size), put into the inbox as a `Turn` and acknowledged
to every tab of the visitor; the answer comes back later through `WebAdapter.sink_for`. A bad
frame gets an error frame and a log line, and the socket stays open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType

from adapters.web import normalize
from adapters.web.fanout import Connection, Fanout
from adapters.web.limits import HandoffCaps, RateLimiter
from adapters.web.normalize import BadFrame, Hello, Press, Say, Vote
from bot import messages
from bot.config import WebSettings
from bot.errors import InboxClosed, InboxFull, InboxUnavailable, InputRejected, StoreUnavailable
from bot.ops.logs import turn_fields
from bot.store.inbox import Inbox
from bot.turns import Turn

log = logging.getLogger(__name__)


def log_fields(conversation: str, *, site: str) -> dict[str, str]:
    """A log line's fields for a visitor's conversation, before there is a turn to name it."""
    return {"conversation": str(normalize.conversation_key(conversation, site=site))}


def refusal(key: str, limit: int, wait: float, *, fields: dict[str, str]) -> str:
    """The error frame for a frame over `key`'s limit, logged."""
    wait = round(wait, 1)  # what the frame carries, so its text and number agree
    log.warning("web: %s is over its limit of %d a minute; refused for %.0f s", key, limit, wait, extra=fields)
    return normalize.encode(normalize.error("rate_limited", messages.web_rate_limited(wait), retry_after=wait))


class Intake:
    """Frames into turns in the inbox. Open from `open` (the server serves) until `close` (it
    is stopping): closed, a message is answered that the server is restarting, to be resent."""

    def __init__(
        self,
        *,
        settings: WebSettings,
        limiter: RateLimiter,
        fanout: Fanout,
        handoffs: HandoffCaps | None,
        page_profile: Callable[[str, str], str],
    ) -> None:
        self._settings = settings
        self._page_profile = page_profile  # (site, page path) -> the page's profile, "" for none
        self._limiter = limiter
        self._fanout = fanout
        self._handoffs = handoffs  # registered as the web chat's handoff gate; notes where messages come from
        self._inbox: Inbox | None = None
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    def open(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._closing = False

    def close(self) -> None:
        self._closing = True

    async def take_frame(self, conn: Connection, msg: aiohttp.WSMessage, ip: str) -> None:
        """One frame from an open conversation. It counts against the limits before anything
        in it is read (a flood of malformed frames is limited like one of messages). Every way
        it can be wrong ends in an error frame and a log line; none ends the socket (aiohttp
        itself closes it on an oversized frame)."""
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.ERROR):
            return  # pings and pongs are aiohttp's
        try:
            if msg.type is WSMsgType.ERROR:  # aiohttp has closed the socket (an oversized frame: 1009)
                log.warning(
                    "web: socket of visitor %s failed: %r", conn.visitor, msg.data, extra=self._fields(conn.visitor)
                )
                await self._limiter.hit(f"ip:{ip}", self._settings.ip_rate)  # it counts all the same
                return
            if not await self._admit(conn, ip):
                return
            if msg.type is WSMsgType.BINARY:
                log.info("web: binary frame from visitor %s refused", conn.visitor, extra=self._fields(conn.visitor))
                conn.push(normalize.encode(normalize.error("binary", messages.NO_TEXT)))
                return
            match normalize.parse_frame(msg.data):
                case Say() as say:
                    await self._take_message(conn, say, ip)
                case Vote() as vote:
                    await self._take_vote(conn, vote)
                case Press() as press:
                    await self._take_press(conn, press)
                case Hello():
                    raise BadFrame("hello_again", "hello was already said")
        except BadFrame as exc:
            log.info("web: bad frame from visitor %s: %s", conn.visitor, exc, extra=self._fields(conn.visitor))
            conn.push(normalize.encode(normalize.error(exc.code, messages.WEB_BAD_FRAME, id=exc.id)))
        except StoreUnavailable as exc:
            log.error("web: frame not taken: %r", exc, extra=self._fields(conn.visitor))
            conn.push(normalize.encode(normalize.error("unavailable", messages.for_user(exc))))
        except Exception as exc:  # the error boundary around one frame: the socket and the server go on
            log.exception("web: frame crashed", extra=self._fields(conn.visitor))
            conn.push(normalize.encode(normalize.error("internal", messages.for_user(exc))))

    async def _take_message(self, conn: Connection, say: Say, ip: str) -> None:
        try:
            normalize.check_text(say, self._settings.max_message_chars)
        except InputRejected as exc:
            log.info("web: message refused: %s", exc, extra=self._fields(conn.visitor))
            conn.push(normalize.encode(normalize.error("rejected", messages.for_user(exc), id=say.id)))
            return
        site = self._settings.site
        profile = self._page_profile(site, say.page) if say.page else ""
        turn = normalize.to_turn(say, conversation=conn.visitor, site=site, profile=profile)
        if self._handoffs is not None:
            await self._handoffs.note(conn.visitor, ip)  # for the handoff caps, wherever the turn is handled
        if await self._put(conn, turn, id=say.id):
            # To every tab, so the others show the message too; the answer's id rides along.
            await self._fanout.publish(conn.visitor, normalize.encode(normalize.ack(say, turn.event_id)))
            log.info("web message taken", extra=turn_fields(turn))

    async def _take_vote(self, conn: Connection, vote: Vote) -> None:
        turn = normalize.feedback_turn(vote, conversation=conn.visitor, site=self._settings.site)
        if await self._put(conn, turn, id=None):
            conn.push(normalize.encode(normalize.voted(vote)))
            log.info("web feedback %s on %s taken", vote.vote, vote.answer, extra=turn_fields(turn))

    async def _take_press(self, conn: Connection, press: Press) -> None:
        """A Confirm or Cancel pressed: into the inbox like a vote. What it did comes back as
        an answer to it, then a `settled` frame, to every tab (`WebSink.settle`); an error frame
        names the press, so the widget offers the buttons again."""
        turn = normalize.choice_turn(press, conversation=conn.visitor, site=self._settings.site)
        if await self._put(conn, turn, id=press.id):
            log.info("web choice %s on call %s taken", press.choice, press.call, extra=turn_fields(turn))

    async def _admit(self, conn: Connection, ip: str) -> bool:
        """Count a frame against the IP's and the visitor's limits; say so if over either. The
        frame is not read first, so the refusal cannot name the message it refused."""
        s = self._settings
        for key, limit in ((f"ip:{ip}", s.ip_rate), (f"visitor:{conn.visitor}", s.visitor_rate)):
            wait = await self._limiter.hit(key, limit)
            if wait is not None:
                conn.push(refusal(key, limit, wait, fields=self._fields(conn.visitor)))
                return False
        return True

    async def _put(self, conn: Connection, turn: Turn, *, id: str | None) -> bool:
        assert self._inbox is not None
        try:
            if self._closing:
                raise InboxClosed("the web chat is shutting down")
            await self._inbox.put(turn)
        except InboxFull:
            log.warning("inbox full; the visitor is asked to retry", extra=turn_fields(turn))
            conn.push(normalize.encode(normalize.error("busy", messages.BUSY, id=id)))
            return False
        except InboxClosed:
            log.info("shutting down; the visitor is asked to resend", extra=turn_fields(turn))
            conn.push(normalize.encode(normalize.error("restarting", messages.WEB_RESTARTING, id=id)))
            return False
        except InboxUnavailable as exc:
            # No platform holds the turn for a retry here: the visitor is told, and resends.
            log.error("inbox unavailable; the visitor is asked to resend: %s", exc, extra=turn_fields(turn))
            conn.push(normalize.encode(normalize.error("unavailable", messages.for_user(exc), id=id)))
            return False
        return True

    def _fields(self, visitor: str) -> dict[str, str]:
        return log_fields(visitor, site=self._settings.site)
