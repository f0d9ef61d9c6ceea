"""The web chat's transport: an aiohttp server for the widget's files and one WebSocket per tab.

Routes: `/` (a demo page that embeds the widget), `/widget.js` and `/widget.css` (the
widget, with this site's title, colour, greeting and wording put in), `/ws` (the chat),
`/healthz` (200 while serving).

A socket's life: the browser says `hello` with the token it kept (or none); Parley
answers `welcome` with a token (the same visitor if the token was good, a new one if it
was missing, malformed, forged or expired) and that visitor's history. Each message is
counted against the rate limits before anything else is read from it, then checked
(shape, size), put into the inbox as a `Turn` and acknowledged; the answer comes back
later through `sink_for`, to every tab of the visitor. A bad frame gets an error frame
and a log line and the socket stays open; a frame over `max_frame_bytes` (sized from
PARLEY_WEB_MAX_MESSAGE_CHARS) closes it unread (code 1009), with a log line.

Past `_session`, a visitor is known by its conversation id (`tokens.conversation_id`, a
hash of the id in the token): the turns, the fan-out of answers (`Connection.visitor`),
the context, tickets and logs never carry the token's own id.

Shutdown follows `bot.server`: when `run` is cancelled the port stops taking connections
and new messages are told the server is restarting, but open sockets stay up so that the
answers in flight still stream out; `aclose` then closes them (code 1012, "service
restart": the widget reconnects, to this process's successor or another replica).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from adapters.web import normalize
from adapters.web.fanout import Connection, Fanout, stop_relay
from adapters.web.limits import HandoffCaps, RateLimiter
from adapters.web.normalize import BadFrame, Hello, Say, Vote
from adapters.web.sink import WebSink
from adapters.web.tokens import InvalidToken, TokenSigner, conversation_id, new_visitor
from bot import messages
from bot.config import WebSettings
from bot.store.context import ContextStore, Message
from bot.errors import (
    ConfigError,
    InboxClosed,
    InboxFull,
    InboxUnavailable,
    InputRejected,
    StoreUnavailable,
)
from bot.store.inbox import Inbox
from bot.ops.logs import turn_fields
from bot.reply import ReplySink
from bot.turns import ConversationKey, Turn

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CONFIG_SLOT = "/*PARLEY_CONFIG*/{}"  # where widget.js receives its settings
HEARTBEAT = 30.0  # seconds between pings; a tab that misses a pong is closed (and reconnects)
HELLO_TIMEOUT = 10.0  # seconds a new socket has to say hello
MAX_TABS = 16  # sockets one visitor may hold at once in one process
SHUTDOWN_TIMEOUT = 5.0  # seconds aiohttp waits for open HTTP requests at cleanup
FRAME_ENVELOPE = 1024  # bytes of a message frame besides its text: type, id, keys, quotes
CACHE = "public, max-age=300"  # the widget's files: a change reaches visitors within minutes
# The demo page: its own files only, and a socket back to this server.
DEMO_CSP = "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def max_frame_bytes(max_chars: int) -> int:
    """The biggest frame read (aiohttp refuses a frame from its header on, at this size and
    above, with close code 1009, before any of it is buffered or parsed). A message at the
    limit always fits, however a client encodes it: a character is at most 12 bytes of
    JSON (a surrogate pair escaped, `\\ud83d\\ude00`; raw UTF-8 is at most 4), so one a
    little over the limit still gets the clear "too long" answer on an open socket."""
    return max_chars * 12 + FRAME_ENVELOPE + 1


class WebAdapter:
    platform = "web"

    def __init__(
        self,
        *,
        settings: WebSettings,
        store: ContextStore,
        limiter: RateLimiter,
        signer: TokenSigner,
        fanout: Fanout,
        handoffs: HandoffCaps | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._limiter = limiter
        self._signer = signer
        self._fanout = fanout
        self._handoffs = handoffs  # registered as the runtime's handoff gate; notes where messages come from
        self._max_frame = max_frame_bytes(settings.max_message_chars)
        self._widget_js = self._render_widget((STATIC / "widget.js").read_text(encoding="utf-8"))
        self._widget_css = (STATIC / "widget.css").read_text(encoding="utf-8")
        self._index = (STATIC / "index.html").read_text(encoding="utf-8")
        self._inbox: Inbox | None = None
        self._runner: web.AppRunner | None = None
        self._relay: asyncio.Task[None] | None = None  # the fan-out's subscription, from run() to aclose()
        self._closing = False
        self.ready = asyncio.Event()  # set while the port takes connections (for tests and /readyz)
        self.port: int | None = None  # the port bound (PARLEY_WEB_PORT=0 picks a free one)

    # -- the way back -----------------------------------------------------------------------

    def sink_for(self, turn: Turn) -> ReplySink:
        """Frames for `turn` go to every open tab of the visitor named by `turn.channel`."""
        return WebSink(self._fanout, turn)

    # -- serving ------------------------------------------------------------------------------

    async def run(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._closing = False
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self._settings.host, self._settings.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._runner = None
            raise ConfigError("PARLEY_WEB_PORT", f"cannot listen on {self._settings.host}:{self._settings.port}: {exc.strerror or exc}") from None
        self.port = runner.addresses[0][1]
        # The subscription outlives run(): answers in flight at shutdown still reach the open
        # tabs, until aclose() closes them. A relay that fails (a bug) stops the adapter here.
        if self._relay is None or self._relay.done():
            self._relay = asyncio.create_task(self._fanout.run(), name="web-fanout")
        log.info("web chat on %s:%s (widget: /widget.js, demo page: /)", self._settings.host, self.port)
        self.ready.set()
        try:
            await asyncio.shield(self._relay)  # until cancelled
        finally:
            # Intake stops here; the sockets stay open for the answers in flight until aclose().
            self.ready.clear()
            self._closing = True
            await site.stop()

    async def aclose(self) -> None:
        """Close every socket (the widget reconnects), then the server. Safe to call twice."""
        self._closing = True
        conns = list(self._fanout.connections())
        await asyncio.gather(
            *(c.ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"server restarting") for c in conns),
            return_exceptions=True,
        )
        if self._relay is not None:
            relay, self._relay = self._relay, None
            await stop_relay(relay)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._origins], client_max_size=64 * 1024)
        app.router.add_get("/", self._demo_page)
        app.router.add_get("/widget.js", self._widget_script)
        app.router.add_get("/widget.css", self._widget_style)
        app.router.add_get("/ws", self._socket)
        app.router.add_get("/healthz", self._healthz)
        return app

    # -- HTTP ---------------------------------------------------------------------------------

    @web.middleware
    async def _origins(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Only the page's own origin and PARLEY_WEB_ALLOWED_ORIGINS may use the chat: a
        WebSocket handshake or CORS request from anywhere else gets 403 (and a log line)."""
        origin = request.headers.get("Origin")
        if not normalize.origin_allowed(origin, request.host, self._settings.allowed_origins):
            log.warning("web: refused origin %s for %s %s from %s", origin, request.method, request.path, request.remote)
            return web.Response(status=403, text=messages.WEB_ORIGIN_REFUSED)
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204, headers={
                "Access-Control-Allow-Methods": "GET, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "600",
            })
        else:
            response = await handler(request)
        if origin is not None and not response.prepared:  # a WebSocket has sent its headers already
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    def _render_widget(self, source: str) -> str:
        s = self._settings
        config = {
            "title": s.title, "colour": s.colour, "greeting": s.greeting, "site": s.site,
            "maxChars": s.max_message_chars, "text": messages.WEB_WIDGET_TEXT,
        }
        if CONFIG_SLOT not in source:
            raise RuntimeError(f"widget.js has no {CONFIG_SLOT} for its settings")
        return source.replace(CONFIG_SLOT, json.dumps(config, ensure_ascii=True))

    async def _widget_script(self, _: web.Request) -> web.Response:
        return web.Response(text=self._widget_js, content_type="application/javascript", charset="utf-8",
                            headers={"Cache-Control": CACHE, "X-Content-Type-Options": "nosniff"})

    async def _widget_style(self, _: web.Request) -> web.Response:
        return web.Response(text=self._widget_css, content_type="text/css", charset="utf-8",
                            headers={"Cache-Control": CACHE, "X-Content-Type-Options": "nosniff"})

    async def _demo_page(self, request: web.Request) -> web.Response:
        snippet = f'<script src="{request.scheme}://{request.host}/widget.js" async></script>'
        page = (
            self._index.replace("{{title}}", html.escape(self._settings.title))
            .replace("{{intro}}", html.escape(messages.WEB_DEMO_INTRO))
            .replace("{{snippet}}", html.escape(snippet))
        )
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers={
            "Content-Security-Policy": DEMO_CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
        })

    async def _healthz(self, _: web.Request) -> web.Response:
        ok = self.ready.is_set()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "stopping\n")

    # -- the socket ---------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=self._max_frame)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade\n")
        await ws.prepare(request)
        ip = normalize.client_address(request.remote, request.headers.get("X-Forwarded-For"), self._settings.proxy_hops)
        if self._closing:
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
            conn.open(normalize.encode(normalize.welcome(token, resumed=resumed, messages=history)))
            log.info("web: visitor %s connected (%s, %d tabs)", conversation, "resumed" if resumed else "new",
                     self._fanout.count(conversation), extra=self._fields(conversation))
            async for msg in ws:
                await self._on_frame(conn, msg, ip)
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
                        await ws.send_str(self._refusal(f"ip:{ip}", self._settings.ip_rate, wait, fields={}))
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
                        await ws.send_str(normalize.encode(normalize.error(exc.code, messages.WEB_BAD_FRAME, id=exc.id)))
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
            return (await self._store.load(self._key(conn.visitor))).messages
        except StoreUnavailable as exc:
            log.error("web: could not load the history: %r", exc, extra=self._fields(conn.visitor))
            conn.push(normalize.encode(normalize.error("unavailable", messages.for_user(exc))))  # after the welcome
            return ()

    async def _on_frame(self, conn: Connection, msg: aiohttp.WSMessage, ip: str) -> None:
        """One frame from an open conversation. It counts against the limits before anything
        in it is read (a flood of malformed frames is limited like one of messages). Every way
        it can be wrong ends in an error frame and a log line; none ends the socket (aiohttp
        itself closes it on an oversized frame)."""
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.ERROR):
            return  # pings and pongs are aiohttp's
        try:
            if msg.type is WSMsgType.ERROR:  # aiohttp has closed the socket (an oversized frame: 1009)
                log.warning("web: socket of visitor %s failed: %r", conn.visitor, msg.data, extra=self._fields(conn.visitor))
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
        turn = normalize.to_turn(say, conversation=conn.visitor, site=self._settings.site)
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

    async def _admit(self, conn: Connection, ip: str) -> bool:
        """Count a frame against the IP's and the visitor's limits; say so if over either. The
        frame is not read first, so the refusal cannot name the message it refused."""
        s = self._settings
        for key, limit in ((f"ip:{ip}", s.ip_rate), (f"visitor:{conn.visitor}", s.visitor_rate)):
            wait = await self._limiter.hit(key, limit)
            if wait is not None:
                conn.push(self._refusal(key, limit, wait, fields=self._fields(conn.visitor)))
                return False
        return True

    @staticmethod
    def _refusal(key: str, limit: int, wait: float, *, fields: dict[str, str]) -> str:
        """The error frame for a frame over `key`'s limit, logged."""
        wait = round(wait, 1)  # what the frame carries, so its text and number agree
        log.warning("web: %s is over its limit of %d a minute; refused for %.0f s", key, limit, wait, extra=fields)
        return normalize.encode(normalize.error("rate_limited", messages.web_rate_limited(wait), retry_after=wait))

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

    def _key(self, visitor: str) -> ConversationKey:
        return ConversationKey(normalize.PLATFORM, self._settings.site, visitor)

    def _fields(self, visitor: str) -> dict[str, str]:
        return {"conversation": str(self._key(visitor))}
