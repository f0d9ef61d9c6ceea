"""The Slack transport: a slack-bolt `AsyncApp` over Socket Mode or the Events API over HTTP.

Bolt runs with `process_before_response=True`, so the ack goes out when the listener
(`intake`) returns, after the turn is safely in the inbox, and no listener is started
fire-and-forget. The answer is produced later by a dialogue worker, through `sink_for`.

One workspace (SLACK_BOT_TOKEN) or many (SLACK_CLIENT_ID: the "Add to Slack" install). With
many, bolt's OAuth flow serves `/slack/install` and `/slack/oauth_redirect` beside the events,
every event is authorised by its workspace's installation (`installs.Installations`), or its
Enterprise Grid org's when Parley is installed org-wide, Parley's identity (its bot user there)
comes with it, answers go out with that installation's token, and `app_uninstalled` /
`tokens_revoked` delete the installation.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.middleware.assistant.async_assistant import AsyncAssistant
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import normalize
from adapters.slack.admin import ChannelConfig
from adapters.slack.assistant import AssistantPane
from adapters.slack.desk import SlackDesk
from adapters.slack.installs import Installations, InstalledClient, OAuthStates, oauth_flow
from adapters.slack.intake import SlackIntake
from adapters.slack.normalize import Identity
from adapters.slack.recents import Recents
from adapters.slack.sink import OnPost, ResponseUrlSink, SlackSink, StreamingSupport, call
from adapters.slack.threads import ThreadMemory
from bot import messages
from bot.config import SlackSettings
from bot.errors import ConfigError, PlatformError
from bot.ops.metrics import Metrics
from bot.ops.stats import AnswerIndex
from bot.reply import NO_JOURNAL, ReplyJournal, ReplySink
from bot.store.dedupe import Deduper
from bot.store.inbox import Inbox
from bot.turns import Turn

if TYPE_CHECKING:
    from bot.profiles import Profiles

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"  # the Request URL for events and the slash command (HTTP mode)
ANY = re.compile(".*")


# Calls that create a message. Slack says a 500 may come after part of a call succeeded:
# retrying one of these could show the answer twice, so only their 503s are retried.
CREATES_MESSAGE = frozenset({"chat.postMessage", "chat.startStream"})


class ServerErrorRetry(AsyncServerErrorRetryHandler):
    """slack_sdk's retry of 500 and 503 (once by default), except a 500 from a call that creates a message."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is not None and response.status_code == 500 and request.url.rsplit("/", 1)[-1] in CREATES_MESSAGE:
            return False
        return await super()._can_retry_async(state=state, request=request, response=response, error=error)


def client_options(settings: SlackSettings) -> dict[str, Any]:
    """How every Web API client of the adapter calls Slack. Slack's 429s are retried after their
    Retry-After by slack_sdk's handler (it only does so when given one), its 500s and
    503s once after a short backoff (`ServerErrorRetry`)."""
    return {
        "base_url": settings.api_base_url,
        "timeout": int(settings.request_timeout),
        "retry_handlers": [
            AsyncConnectionErrorRetryHandler(),
            AsyncRateLimitErrorRetryHandler(max_retry_count=settings.rate_limit_retries),
            ServerErrorRetry(max_retry_count=1),
        ],
    }


def web_client(settings: SlackSettings) -> AsyncWebClient:
    """The one Web API client of the adapter: with the bot token of the one workspace, or none
    (many workspaces: each answer's client gets its workspace's token, `InstalledClient`)."""
    token = settings.bot_token.get_secret_value() if settings.bot_token is not None else None
    return AsyncWebClient(token=token, **client_options(settings))


async def sign_in(client: AsyncWebClient) -> tuple[Identity, AuthorizeResult]:
    """auth.test once at start-up (one workspace): who Parley is there, and the fixed result bolt
    is given, so that no event waits on an auth.test of its own."""
    try:
        response = await call("auth.test", client.auth_test())
    except PlatformError as exc:
        if exc.permanent:
            raise ConfigError("SLACK_BOT_TOKEN", f"Slack refused the bot token ({exc.code})") from None
        raise
    identity = Identity(
        user_id=str(response.get("user_id", "")),
        bot_id=str(response.get("bot_id", "")),
        team_id=str(response.get("team_id", "")),
        enterprise_id=str(response.get("enterprise_id") or ""),
    )
    log.info("slack: signed in as %s (%s) in team %s", response.get("user"), identity.user_id, identity.team_id)
    return identity, AuthorizeResult.from_auth_test_response(bot_token=client.token, auth_test_response=response)


class SlackAdapter:
    """Slack's connection and readiness, the support desk's start, and the way back (`sink_for`);
    what arrives is taken by a `SlackIntake` made for each run."""

    platform = "slack"

    def __init__(
        self,
        *,
        settings: SlackSettings,
        deduper: Deduper,
        threads: ThreadMemory,
        client: AsyncWebClient | None = None,
        metrics: Metrics | None = None,
        desk: SlackDesk | None = None,
        register_desk: Callable[[SlackDesk], None],
        answers: AnswerIndex | None = None,
        installations: Installations | None = None,
        states: OAuthStates | None = None,
        profiles: Profiles,
        recents: Recents,
        person: Callable[[Turn], bool] = lambda turn: False,
    ) -> None:
        self._settings = settings
        self._person = person  # a desk takes the turn's requests for a person: "Talk to a person" under answers
        self._profiles = profiles  # mention rules, the pane's prompts, the Home tab, `/parley config`
        self._desk = desk  # the support channel's ticket threads, when handoff is configured
        self._register_desk = register_desk  # offers the desk for new tickets, once verified
        self.desk_open = False  # the support channel passed `SlackDesk.verify`: tickets go there
        self._answers = answers  # each answer message posted, for 👍/👎 reactions on it
        self._deduper = deduper
        self._threads = threads
        self._recents = recents  # each person's conversations, for the Home tab
        self._client = client or web_client(settings)
        self._metrics = metrics
        self._streaming = StreamingSupport(settings.native_streaming)
        self._installations = installations  # many workspaces: their bots, from "Add to Slack"
        self._client_options = client_options(settings)  # made once: every answer's client shares them
        self._states = states
        self.identity: Identity | None = None  # one workspace's: from auth.test at start-up
        self.ready = asyncio.Event()  # set once Slack can reach Parley (for tests and probes)
        self.port: int | None = None  # the HTTP port bound (Events API mode)

    # -- the way back -----------------------------------------------------------------------

    def sink_for(self, turn: Turn, journal: ReplyJournal = NO_JOURNAL) -> ReplySink:
        if url := turn.handle.get("response_url"):
            return ResponseUrlSink(url)
        return SlackSink(
            self._client_for(turn.tenant),
            turn,
            limit=self._settings.message_limit,
            interval=self._settings.edit_interval,
            streaming=self._streaming,
            on_post=self._remembering(turn),
            journal=journal,
            feedback=self._settings.feedback_buttons and self._answers is not None,
            person=self._person(turn),
        )

    def _client_for(self, tenant: str) -> AsyncWebClient:
        if self._installations is None:
            return self._client
        # The tenant's own token (a workspace's, or its org's when installed org-wide), read at the first call.
        return InstalledClient(self._installations, tenant, session=self._client.session, **self._client_options)

    def _remembering(self, turn: Turn) -> OnPost | None:
        """Remembers each message of the answer to `turn`, so a 👍/👎 on it finds the answer."""
        if (answers := self._answers) is None:
            return None

        async def remember(ts: str) -> None:
            await answers.remember(normalize.desk_thread(turn.channel, ts), turn)

        return remember

    # -- the connection -----------------------------------------------------------------------

    async def run(self, inbox: Inbox) -> None:
        if self._client.session is None:
            # One pooled session for every Web API call: without it slack_sdk opens (and
            # TLS-handshakes) a new connection per call, an edit included. Every attempt
            # through it is seen by the trace that counts Slack's 429s and 5xx.
            traces = [self._metrics.platform_trace(self.platform)] if self._metrics is not None else None
            self._client.session = aiohttp.ClientSession(trace_configs=traces)
        auth = None
        if self._installations is None:
            self.identity, auth = await sign_in(self._client)
        # Notices (busy, no text) are posted off the request path, by tasks this adapter owns.
        async with asyncio.TaskGroup() as notices:
            if self._desk is not None and not await self._check_desk(self._desk):
                notices.create_task(self._open_desk(self._desk))
            intake = SlackIntake(
                identity=self.identity,
                inbox=inbox,
                notices=notices,
                threads=self._threads,
                deduper=self._deduper,
                answers=self._answers,
                open_desk=lambda: self._desk if self.desk_open else None,
                sink_for=self.sink_for,
                profiles=self._profiles,
                client_for=self._client_for,
                recents=self._recents,
                help_text=messages.slack_help(config=self._profiles.editable),  # `/parley config` stores a change
            )
            pane = AssistantPane(
                threads=self._threads,
                deduper=self._deduper,
                profiles=self._profiles,
                default_prompts=self._settings.suggested_prompts,
                notices=notices,
                client_for=self._client_for,
                sink_for=self.sink_for,
                recents=self._recents,
            )
            admin = ChannelConfig(
                profiles=self._profiles, client_for=self._client_for, notices=notices, settings=self._settings
            )
            app = self._bolt_app(auth, intake, pane, admin)
            intake.shortcuts().register(app)  # the "⋯" menu's Ask and Summarise
            if self._settings.app_token is not None:
                await self._socket_mode(app, self._settings.app_token.get_secret_value())
            else:
                await self._http(app)

    async def aclose(self) -> None:
        """Called after the answers in flight are done (they post through this session)."""
        session = self._client.session
        if session is not None and not session.closed:
            await session.close()

    async def _check_desk(self, desk: SlackDesk) -> bool:
        """One check of the default support channel; True once settled and the desk open. A refused
        default stays off with a loud error saying the fix (profiles' channels are checked on their
        own), and Slack goes on serving everything else: a wrong handoff setting must not take the bot
        down (nor the other adapters, which could not be told apart from it: the check needs Slack)."""
        try:
            await desk.verify()
        except ConfigError as exc:
            log.error("slack: the support desk is OFF in its default channel, no tickets will be opened there: %s", exc)
        except PlatformError as exc:
            log.warning("slack: cannot check the support channel yet (%s); the desk opens once Slack answers", exc)
            return False
        self._register_desk(desk)
        self.desk_open = True
        log.info("slack: support desk open (default channel %s; and those profiles name)", desk.channel or "none")
        return True

    async def _open_desk(self, desk: SlackDesk) -> None:
        pause = 5.0
        while True:
            await asyncio.sleep(pause)
            if await self._check_desk(desk):
                return
            pause = min(pause * 2, 300.0)

    def _bolt_app(
        self, auth: AuthorizeResult | None, intake: SlackIntake, pane: AssistantPane, admin: ChannelConfig
    ) -> AsyncApp:
        socket_mode = self._settings.app_token is not None
        secret = self._settings.signing_secret
        # Bolt builds a client per request from this one and the token authorisation gives;
        # it carries no token itself, so bolt does not also try its own auth.test.
        client = AsyncWebClient(base_url=self._settings.api_base_url, timeout=int(self._settings.request_timeout))

        async def authorize(
            enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None
        ) -> AuthorizeResult | None:
            if auth is not None:
                return auth
            assert self._installations is not None
            # The installation Slack says the event is for: a workspace's, or its org's (org-wide).
            return await self._installations.authorize(enterprise_id, team_id, is_enterprise_install)

        app = AsyncApp(
            client=client,
            authorize=authorize,  # type: ignore[arg-type]  # bolt takes None as "not installed here"
            signing_secret=secret.get_secret_value() if secret else "",
            request_verification_enabled=not socket_mode,  # Socket Mode has no signatures
            process_before_response=True,  # ack after the listener: after the inbox has the turn
            ignoring_self_events_enabled=True,
            logger=logging.getLogger("slack_bolt"),
        )
        if self._installations is not None:
            # Before the catch-all: an uninstall or a revoked token ends the installation.
            app.event("app_uninstalled")(self._installations.uninstalled)
            app.event("tokens_revoked")(self._installations.uninstalled)
            for kind in ("team_access_revoked", "team_access_granted"):
                app.event(kind)(self._installations.access_changed)
            app.middleware(self._installations.screen)
        # The assistant pane's own events; its messages go on to the catch-all like any DM's.
        assistant = AsyncAssistant(logger=logging.getLogger("slack_bolt"))
        assistant.thread_started(pane.started)
        assistant.thread_context_changed(pane.context_changed)
        app.middleware(pane.screen)
        app.use(assistant)
        app.event("app_home_opened")(pane.home)
        # One listener for every event (bolt answers 404 to events nobody listens to, and
        # Slack would retry those); `normalize` decides what is Parley's to answer.
        app.event(ANY)(intake.event)
        admin.register(app)  # `/parley config`, before every other /parley
        app.command(ANY)(intake.command)
        if self._desk is not None:
            app.action(normalize.RESOLVE_ACTION)(intake.resolve)
        for action_id in (*normalize.CHOICE_ACTIONS, normalize.PERSON_ACTION):
            app.action(action_id)(intake.press)
        app.action(normalize.FEEDBACK_ACTION)(intake.feedback)
        return app

    async def _socket_mode(self, app: AsyncApp, app_token: str) -> None:
        handler = AsyncSocketModeHandler(app, app_token, web_client=self._client)
        try:
            await handler.connect_async()
            log.info("slack: connected over Socket Mode")
            self.ready.set()
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.ready.clear()
            await handler.close_async()

    async def _http(self, app: AsyncApp) -> None:
        async def events(request: web.Request) -> web.Response:
            return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

        server = web.Application()
        server.router.add_post(EVENTS_PATH, events)
        if self._installations is not None:
            assert self._states is not None
            _serve_installs(server, self._settings, self._installations, self._states)
        runner = web.AppRunner(server, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._settings.http_host, self._settings.http_port)
            await site.start()
            self.port = runner.addresses[0][1]
            log.info("slack: Events API listening on %s:%s%s", self._settings.http_host, self.port, EVENTS_PATH)
            self.ready.set()
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.ready.clear()
            await runner.cleanup()


def _serve_installs(
    server: web.Application, settings: SlackSettings, installs: Installations, states: OAuthStates
) -> None:
    """The "Add to Slack" pages: bolt's OAuth flow at `/slack/install` and `/slack/oauth_redirect`."""
    flow = oauth_flow(settings, installs, states, AsyncWebClient(**client_options(settings)))

    async def install(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await flow.handle_installation(await to_bolt_request(request)))

    async def redirected(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await flow.handle_callback(await to_bolt_request(request)))

    server.router.add_get(flow.install_path, install)
    server.router.add_get(flow.redirect_uri_path, redirected)
