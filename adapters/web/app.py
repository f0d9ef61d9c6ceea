"""The web chat's transport: an aiohttp server for the widget's files and one WebSocket per tab.

Routes: `/` (a demo page that embeds the widget), `/widget.js` and `/widget.css` (the
widget, with this site's title, colour, greeting and wording put in: `pages`), `/ws` (the
chat: a tab's socket is `sessions`' job, what it says the `intake`'s), `/healthz` (200 while
serving). Answers come back later through `sink_for`, to every tab of the visitor.

Shutdown follows `bot.server`: when `run` is cancelled the port stops taking connections
and new messages are told the server is restarting, but open sockets stay up so that the
answers in flight still stream out; `aclose` then closes them (code 1012, "service
restart": the widget reconnects, to this process's successor or another replica).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, web

from adapters.web import normalize
from adapters.web.fanout import Fanout, stop_relay
from adapters.web.intake import Intake
from adapters.web.limits import HandoffCaps, RateLimiter
from adapters.web.pages import Pages
from adapters.web.sessions import Sessions
from adapters.web.sink import WebSink
from adapters.web.tokens import TokenSigner
from bot import messages
from bot.config import WebSettings
from bot.errors import ConfigError
from bot.reply import NO_JOURNAL, ReplyJournal, ReplySink
from bot.store.context import ContextStore
from bot.store.inbox import Inbox
from bot.turns import Turn

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 5.0  # seconds aiohttp waits for open HTTP requests at cleanup

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebAdapter:
    """The web chat's server and its life (`run`, `aclose`), the origin check in front of every
    route, and the way back (`sink_for`); the routes themselves are its parts'."""

    platform = "web"

    def __init__(
        self,
        *,
        settings: WebSettings,
        store: ContextStore,
        limiter: RateLimiter,
        signer: TokenSigner,
        fanout: Fanout,
        page_profile: Callable[[str, str], str],
        handoffs: HandoffCaps | None = None,
        person: bool = False,
    ) -> None:
        self._settings = settings
        self._fanout = fanout
        self._pages = Pages(settings)
        self._intake = Intake(
            settings=settings, limiter=limiter, fanout=fanout, handoffs=handoffs, page_profile=page_profile
        )
        self._sessions = Sessions(
            settings=settings,
            store=store,
            limiter=limiter,
            signer=signer,
            fanout=fanout,
            intake=self._intake,
            person=person,
        )
        self._runner: web.AppRunner | None = None
        self._relay: asyncio.Task[None] | None = None  # the fan-out's subscription, from run() to aclose()
        self.ready = asyncio.Event()  # set while the port takes connections (for tests and /readyz)
        self.port: int | None = None  # the port bound (PARLEY_WEB_PORT=0 picks a free one)

    # -- the way back -----------------------------------------------------------------------

    def sink_for(self, turn: Turn, journal: ReplyJournal = NO_JOURNAL) -> ReplySink:
        """Frames for `turn` go to every open tab of the visitor named by `turn.channel` (a
        frame is not edited later: a taken-over answer is simply sent again)."""
        return WebSink(self._fanout, turn)

    # -- serving ------------------------------------------------------------------------------

    async def run(self, inbox: Inbox) -> None:
        self._intake.open(inbox)
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self._settings.host, self._settings.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._runner = None
            raise ConfigError(
                "PARLEY_WEB_PORT",
                f"cannot listen on {self._settings.host}:{self._settings.port}: {exc.strerror or exc}",
            ) from None
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
            self._intake.close()
            await site.stop()

    async def aclose(self) -> None:
        """Close every socket (the widget reconnects), then the server. Safe to call twice."""
        self._intake.close()
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
        app.router.add_get("/", self._pages.demo_page)
        app.router.add_get("/widget.js", self._pages.widget_script)
        app.router.add_get("/widget.css", self._pages.widget_style)
        app.router.add_get("/ws", self._sessions.socket)
        app.router.add_get("/healthz", self._healthz)
        return app

    # -- HTTP ---------------------------------------------------------------------------------

    @web.middleware
    async def _origins(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Only the page's own origin and PARLEY_WEB_ALLOWED_ORIGINS may use the chat: a
        WebSocket handshake or CORS request from anywhere else gets 403 (and a log line)."""
        origin = request.headers.get("Origin")
        if not normalize.origin_allowed(origin, request.host, self._settings.allowed_origins):
            log.warning(
                "web: refused origin %s for %s %s from %s", origin, request.method, request.path, request.remote
            )
            return web.Response(status=403, text=messages.WEB_ORIGIN_REFUSED)
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, OPTIONS",
                    "Access-Control-Allow-Headers": "Content-Type",
                    "Access-Control-Max-Age": "600",
                },
            )
        else:
            response = await handler(request)
        if origin is not None and not response.prepared:  # a WebSocket has sent its headers already
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    async def _healthz(self, _: web.Request) -> web.Response:
        ok = self.ready.is_set()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "stopping\n")
