"""A tab's WebSocket (`/ws`), from the handshake to its close.

The browser says `hello` with the token it kept (or none); Parley answers `welcome` with a
token (the same visitor if the token was good, a new one if it was missing, malformed, forged
or expired) and that visitor's history. From then on each frame goes to the intake, and
answers reach every tab of the visitor through the fan-out. A frame over `max_frame_bytes`
(sized from PARLEY_WEB_MAX_MESSAGE_CHARS) closes the socket unread (code 1009), with a log line.

Past `Sessions._session`, a visitor is known by its conversation id (`tokens.conversation_id`,
a hash of the id in the token): the turns, the fan-out of answers (`Connection.visitor`),
the context, tickets and logs never carry the token's own id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiohttp import WSCloseCode, WSMsgType, web

from adapters.web import normalize
from adapters.web.fanout import Connection, Fanout
from adapters.web.intake import Intake, log_fields, refusal
from adapters.web.limits import RateLimiter
from adapters.web.normalize import BadFrame, Hello
from adapters.web.tokens import InvalidToken, TokenSigner, conversation_id, new_visitor
from bot import messages
from bot.config import WebSettings
from bot.errors import StoreUnavailable
from bot.store.context import ContextStore, Message

log = logging.getLogger(__name__)

HEARTBEAT = 30.0  # seconds between pings; a tab that misses a pong is closed (and reconnects)
HELLO_TIMEOUT = 10.0  # seconds a new socket has to say hello
MAX_TABS = 16  # sockets one visitor may hold at once in one process
FRAME_ENVELOPE = 1024  # bytes of a message frame besides its text: type, id, keys, quotes


def max_frame_bytes(max_chars: int) -> int:
    """The biggest frame read (aiohttp refuses a frame from its header on, at this size and
    above, with close code 1009, before any of it is buffered or parsed). A message at the
    limit always fits, however a client encodes it: a character is at most 12 bytes of
    JSON (a surrogate pair escaped, `\\ud83d\\ude00`; raw UTF-8 is at most 4), so one a
    little over the limit still gets the clear "too long" answer on an open socket."""
    return max_chars * 12 + FRAME_ENVELOPE + 1


class Sessions:
    """The `/ws` route: a tab's hello, its visitor, the tab limit and its history; its frames go to the intake."""

    def __init__(
        self,
        *,
        settings: WebSettings,
        store: ContextStore,
        limiter: RateLimiter,
        signer: TokenSigner,
        fanout: Fanout,
        intake: Intake,
        person: bool,
    ) -> None:
        self._settings = settings
        self._person = person  # whether the widget offers "Talk to a person" (a desk takes requests)
        self._store = store
        self._limiter = limiter
        self._signer = signer
        self._fanout = fanout
        self._intake = intake
        self._max_frame = max_frame_bytes(settings.max_message_chars)

    async def socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=self._max_frame)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade\n")
        await ws.prepare(request)
        ip = normalize.client_address(request.remote, request.headers.get("X-Forwarded-For"), self._settings.proxy_hops)
        if self._intake.closing:
            await ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"server restarting")
            return ws
        hello = await self._hello(ws, ip)
        if hello is None:
            return ws
        visitor, token, resumed = self._session(hello.token)
        conversation = conversation_id(visitor)
        if self._fanout.count(conversation) >= MAX_TABS:
            log.warning("web: visitor %s has %d tabs open; refusing another", conversation, MAX_TABS)
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many tabs")
            return ws
        conn = Connection(ws, conversation)
        pump = asyncio.create_task(conn.pump(), name=f"web-pump-{conversation}")
        try:
            await self._fanout.attach(conn)  # first, so no answer published while the history loads is lost
            history = await self._history(conn) if resumed else ()
            welcome = normalize.welcome(token, resumed=resumed, messages=history, person=self._person)
            conn.open(normalize.encode(welcome))
            log.info(
                "web: visitor %s connected (%s, %d tabs)",
                conversation,
                "resumed" if resumed else "new",
                self._fanout.count(conversation),
                extra=self._fields(conversation),
            )
            async for msg in ws:
                await self._intake.take_frame(conn, msg, ip)
        finally:
            self._fanout.detach(conn)
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        return ws

    async def _hello(self, ws: web.WebSocketResponse, ip: str) -> Hello | None:
        """The socket's first real frame must be `hello`; other frames before it get an error.
        None when the socket closed or stayed silent for HELLO_TIMEOUT."""
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                while True:
                    msg = await ws.receive()
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                        return None
                    # Every frame counts against the address's limit before it is read.
                    try:
                        wait = await self._limiter.hit(f"ip:{ip}", self._settings.ip_rate)
                    except StoreUnavailable as exc:
                        log.error("web: no rate limit check for %s before hello: %r", ip, exc)
                        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"unavailable")
                        return None
                    if wait is not None:
                        await ws.send_str(refusal(f"ip:{ip}", self._settings.ip_rate, wait, fields={}))
                        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"rate limited")
                        return None
                    if msg.type is WSMsgType.ERROR:
                        log.warning("web: socket from %s failed before hello: %r", ip, msg.data)
                        return None
                    try:
                        if msg.type is not WSMsgType.TEXT:
                            raise BadFrame("binary", "frames are JSON text")
                        frame = normalize.parse_frame(msg.data)
                        if not isinstance(frame, Hello):
                            raise BadFrame("hello_first", "the first frame must be hello")
                        return frame
                    except BadFrame as exc:
                        log.info("web: bad frame before hello from %s: %s", ip, exc)
                        await ws.send_str(
                            normalize.encode(normalize.error(exc.code, messages.WEB_BAD_FRAME, id=exc.id))
                        )
        except TimeoutError:
            log.info("web: no hello from %s within %.0f s; closing", ip, HELLO_TIMEOUT)
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no hello")
            return None

    def _session(self, token: str | None) -> tuple[str, str, bool]:
        """(visitor, token to keep, whether the conversation continues). A bad token starts a
        new conversation; it never says whose the token claimed to be."""
        if token:
            try:
                visitor = self._signer.verify(token)
            except InvalidToken as exc:
                log.info("web: %s; starting a new conversation", exc)
            else:
                return visitor, self._signer.issue(visitor), True
        visitor = new_visitor()
        return visitor, self._signer.issue(visitor), False

    async def _history(self, conn: Connection) -> Sequence[Message]:
        try:
            key = normalize.conversation_key(conn.visitor, site=self._settings.site)
            return (await self._store.load(key)).messages
        except StoreUnavailable as exc:
            log.error("web: could not load the history: %r", exc, extra=self._fields(conn.visitor))
            conn.push(normalize.encode(normalize.error("unavailable", messages.for_user(exc))))  # after the welcome
            return ()

    def _fields(self, visitor: str) -> dict[str, str]:
        return log_fields(visitor, site=self._settings.site)
