"""A fake Slack on loopback that speaks Slack's real protocols, so slack-bolt and slack_sdk run unmodified.

- Web API: `POST /api/{method}` (form, query or JSON arguments, bearer token checked),
  recording every call with its start and end time; per-method latency, a number
  of 429 answers (with Retry-After), 5xx answers and channels that are gone
  (channel_not_found) can be injected. Messages posted, edited and
  streamed are kept per channel and thread; ephemeral ones apart (`ephemeral`).
  Channels (`add_channel`: conversations.info), people (`add_user`: users.info) and user
  groups (`add_group`: usergroups.users.list) answer as Slack does, unknown ones with
  Slack's error for them.
- `POST /response/{id}`: slash commands' response_url.
- `GET /socket`: a Socket Mode WebSocket (`apps.connections.open` returns its ws:// URL).
  It says `hello`, pushes envelopes (`push`) and collects the acks.
- `signed_request`: a signed Events API request as Slack sends one; `block_action` and
  `feedback_press` the interactivity payloads of button presses, `message_action` a message
  shortcut's (sent as a signed form).
- Threads others wrote (`add_thread`): `conversations.replies` serves them in pages of
  `replies_page`, with Slack's cursor; channels in `not_in` answer not_in_channel.
  A channel's messages (`add_history`): `conversations.history` serves them newest first, those
  after `oldest` (and before `latest`), in pages of `history_page` with Slack's cursor; channels
  in `not_in` answer not_in_channel, channels it has none of channel_not_found.
- `chat.getPermalink` answers a link for any message of a channel not in `gone_channels`.
- The assistant pane and App Home: `assistant.threads.setSuggestedPrompts`, `.setStatus`
  (`statuses`), `.setTitle` (`titles`) and `views.publish` (`homes`) check their arguments.
- Modals: `views.open` takes a trigger id Slack issued in the last 3 seconds (a slash command's,
  a press's), once, and keeps the view (`views`); `view_submission` is the payload Slack sends
  when a person submits it. `add_user(..., admin=True)` is a workspace admin (users.info).
- Installs ("Add to Slack"): `install(team)` is a person approving Parley in a workspace and
  returns the `code` Slack redirects with; `oauth.v2.access` exchanges it (client id and secret
  checked) for that workspace's bot token, rotating (expiring, with a refresh token) when asked,
  and refreshes rotating tokens. Every token is a workspace's: calls are answered as that
  workspace's bot, recorded with its team (`Call.team`). `revoke(team)` revokes its tokens,
  as an uninstall does: a call with one is answered 401 `token_revoked`. Enterprise Grid:
  `install(org, org_wide=True)` is an org admin installing Parley for the whole org: the
  exchange answers as Slack does (`is_enterprise_install`, `enterprise`, `team: null`) with one
  bot token for the org, and calls with it are recorded with the org's id as `Call.team`;
  `install(team, enterprise=org)` is a workspace of that org installing Parley on its own.
  `event_callback(..., enterprise=org, org_wide=True)` is an event from a workspace of the org.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

BOT_USER = "UPARLEY"
BOT_ID = "BPARLEY"
TEAM = "T0001"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    started: float
    ended: float | None = None
    status: int = 200
    error: str = ""
    team: str = ""  # the workspace whose token the call carried
    token: str = ""  # that token


@dataclass
class Posted:
    """A message as the fake shows it: its text now, and whether it came by native streaming."""

    channel: str
    ts: str
    thread_ts: str | None
    text: str
    streamed: bool = False
    stopped: bool = False
    blocks: list[dict[str, Any]] | None = None  # Block Kit, when the message has any
    user: str = ""  # an ephemeral message: the one person who sees it


@dataclass
class Ack:
    envelope_id: str
    at: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Install:
    """A workspace's bot, as its install made it."""

    team: str  # the workspace, or the Grid org of an org-wide install
    token: str
    user_id: str
    bot_id: str
    refresh_token: str = ""
    enterprise: str = ""  # the Grid org the workspace is in (the org itself, org-wide)
    org_wide: bool = False


CLIENT_ID = "1111.2222"
CLIENT_SECRET = "fake-client-secret-4242"


class FakeSlack:
    def __init__(self, *, token: str, app_token: str = "", streaming: bool = False) -> None:
        self.token = token
        self.app_token = app_token
        # Every bot token the fake honours, by token: the single-workspace one, then installs'.
        self.bots: dict[str, Install] = {token: Install(TEAM, token, BOT_USER, BOT_ID)}
        self.revoked: set[str] = set()
        self._codes: dict[str, Install] = {}  # code -> the install it grants (its token not issued yet)
        self._rotating: dict[str, int | None] = {}  # code -> expires_in when rotating
        self._caller = self.bots[token]
        self.streaming = streaming  # offer chat.startStream/appendStream/stopStream
        self.calls: list[Call] = []
        self.latency: dict[str, float] = {}  # seconds added to a method (or a response_url path)
        self.rate_limits: dict[str, int] = {}  # method -> how many of its next calls get a 429
        self.retry_after = 1
        self.server_errors: dict[str, list[int]] = {}  # method -> the statuses (500, 503) its next calls get
        self.gone_channels: set[str] = set()  # chat.* calls into these answer channel_not_found
        self.blocks_refused: set[str] = set()  # methods that answer invalid_blocks to any call with blocks
        self.messages: list[Posted] = []
        self.users: dict[str, dict[str, Any]] = {}  # users.info answers, by user id (add_user)
        self.channels: dict[str, dict[str, Any]] = {}  # conversations.info answers, by channel id (add_channel)
        self.groups: dict[str, list[str]] = {}  # user group id -> member ids (add_group)
        self.ephemeral: list[Posted] = []  # chat.postEphemeral: `thread_ts` and the one user who sees it (`user`)
        self.responses: list[dict[str, Any]] = []  # what arrived at response_urls
        self.acks: list[Ack] = []
        self.statuses: list[tuple[str, str, str]] = []  # assistant.threads.setStatus: (channel, thread, status)
        self.titles: dict[tuple[str, str], str] = {}  # assistant.threads.setTitle: (channel, thread) -> title
        self.homes: dict[str, dict[str, Any]] = {}  # views.publish: user -> their Home tab's view
        self.views: list[dict[str, Any]] = []  # views.open: each modal opened, with its "id"
        self.threads: dict[tuple[str, str], list[dict[str, Any]]] = {}  # conversations.replies (add_thread)
        self.replies_page = 100  # the most messages one conversations.replies page holds, whatever `limit` asks
        self.not_in: set[str] = set()  # channels whose conversations.replies/.history answer not_in_channel
        self.histories: dict[str, list[dict[str, Any]]] = {}  # conversations.history (add_history), by channel
        self.history_page = 100  # the most messages one conversations.history page holds, whatever `limit` asks
        self.url = ""
        self._ts = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # slack_sdk sends users.info and the like as GET
        app.router.add_post("/response/{id}", self._response_url)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        for ws in self._sockets:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    def response_url(self) -> str:
        return f"{self.url}/response/{uuid.uuid4().hex}"

    # -- what tests look at -----------------------------------------------------------------

    def calls_to(self, method: str, *, ok: bool | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and (ok is None or (c.status == 200 and not c.error) == ok)]

    def in_thread(self, channel: str, thread_ts: str | None) -> list[Posted]:
        return [m for m in self.messages if m.channel == channel and m.thread_ts == thread_ts]

    async def wait_for(self, check: Callable[[], Any], timeout: float = 120) -> Any:
        """Wait until `check()` is truthy (re-checked on every call the fake receives)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                while not (result := check()):
                    try:
                        async with asyncio.timeout(0.5):
                            await self._changed.wait()
                    except TimeoutError:
                        pass
                return result

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the Web API ------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        else:
            args.update(await request.post())
        call = Call(method, args, time.monotonic())
        self.calls.append(call)
        await self._notify()
        if delay := self.latency.get(method):
            await asyncio.sleep(delay)
        if self.rate_limits.get(method, 0) > 0:
            self.rate_limits[method] -= 1
            return self._finish(call, {"ok": False, "error": "ratelimited"}, status=429)
        if self.server_errors.get(method):
            return self._finish(
                call, {"ok": False, "error": "internal_error"}, status=self.server_errors[method].pop(0)
            )
        if method == "oauth.v2.access":
            return self._finish(call, self._oauth_v2_access(request, args))
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        bot = self.bots.get(bearer)
        call.team, call.token = (bot.team if bot is not None else ""), bearer
        if bearer in self.revoked:
            return self._finish(call, {"ok": False, "error": "token_revoked"}, status=401)
        if method == "apps.connections.open":
            if bearer != self.app_token:
                return self._finish(call, {"ok": False, "error": "invalid_auth"})
        elif bot is None:
            return self._finish(call, {"ok": False, "error": "invalid_auth"})
        else:
            self._caller = bot  # for the handler below, which runs before anything else can
        if method.startswith("chat.") and args.get("channel") in self.gone_channels:
            return self._finish(call, {"ok": False, "error": "channel_not_found"})
        if method in self.blocks_refused and args.get("blocks"):
            return self._finish(call, {"ok": False, "error": "invalid_blocks"})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        body = handler(args) if handler else {"ok": True}
        return self._finish(call, body)

    def _finish(self, call: Call, body: dict[str, Any], *, status: int = 200) -> web.Response:
        call.ended = time.monotonic()
        call.status = status
        call.error = "" if body.get("ok") else str(body.get("error"))
        headers = {"Retry-After": str(self.retry_after)} if status == 429 else {}
        asyncio.get_running_loop().create_task(self._notify())
        return web.json_response(body, status=status, headers=headers)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        bot = self._caller
        return {
            "ok": True,
            "url": "https://fake.slack.test/",
            "team": "Fake",
            "user": "parley",
            "team_id": bot.team,
            "user_id": bot.user_id,
            "bot_id": bot.bot_id,
        }

    # -- installs -----------------------------------------------------------------------------

    def install(
        self, team: str, *, rotating_for: int | None = None, enterprise: str = "", org_wide: bool = False
    ) -> str:
        """A person in workspace `team` approves Parley: the code Slack puts in the redirect.
        `rotating_for`: the token expires after that many seconds (token rotation is on).
        `enterprise`: the Grid org the workspace is in; `org_wide`: `team` is a Grid org, and an
        org admin installs Parley for all of it."""
        code = uuid.uuid4().hex
        org = team if org_wide else enterprise
        self._codes[code] = Install(team, "", f"UBOT{team}", f"BBOT{team}", enterprise=org, org_wide=org_wide)
        self._rotating[code] = rotating_for
        return code

    def bot_of(self, team: str) -> Install | None:
        """The workspace's current (newest) bot token."""
        return next((b for b in reversed(self.bots.values()) if b.team == team and b.token not in self.revoked), None)

    def revoke(self, team: str) -> None:
        """Every token of the workspace stops working, as when Parley is uninstalled there."""
        self.revoked |= {b.token for b in self.bots.values() if b.team == team}

    def _oauth_v2_access(self, request: web.Request, args: dict[str, Any]) -> dict[str, Any]:
        credentials = (args.get("client_id"), args.get("client_secret"))
        if request.headers.get("Authorization", "").startswith("Basic "):
            raw = base64.b64decode(request.headers["Authorization"][6:]).decode()
            credentials = tuple(raw.split(":", 1))  # type: ignore[assignment]
        if credentials != (CLIENT_ID, CLIENT_SECRET):
            return {"ok": False, "error": "invalid_client_id"}
        if args.get("grant_type") == "refresh_token":
            old = next((b for b in self.bots.values() if b.refresh_token == args.get("refresh_token")), None)
            if old is None or old.token in self.revoked:
                return {"ok": False, "error": "invalid_refresh_token"}
            return self._issue(old, rotating_for=3600)
        code = args.get("code", "")
        found = self._codes.pop(code, None)
        if found is None:
            return {"ok": False, "error": "invalid_code"}
        return self._issue(found, rotating_for=self._rotating.pop(code, None))

    def _issue(self, grant: Install, *, rotating_for: int | None) -> dict[str, Any]:
        team = grant.team
        token = f"{'xoxe.' if rotating_for else ''}xoxb-{team}-{uuid.uuid4().hex[:12]}"
        refresh = f"xoxe-1-{uuid.uuid4().hex}" if rotating_for else ""
        self.bots[token] = Install(
            team, token, grant.user_id, grant.bot_id, refresh, enterprise=grant.enterprise, org_wide=grant.org_wide
        )
        enterprise = {"id": grant.enterprise, "name": f"Org {grant.enterprise}"} if grant.enterprise else None
        body: dict[str, Any] = {
            "ok": True,
            "app_id": "A0001",
            "access_token": token,
            "token_type": "bot",
            "scope": "app_mentions:read,chat:write",
            "bot_user_id": grant.user_id,
            # An org-wide install is no workspace's: Slack answers `team: null` and the org.
            "team": None if grant.org_wide else {"id": team, "name": f"Team {team}"},
            "enterprise": enterprise,
            "is_enterprise_install": grant.org_wide,
            "authed_user": {"id": "UINSTALLER"},
        }
        if rotating_for:
            body |= {"refresh_token": refresh, "expires_in": rotating_for}
        return body

    def add_user(
        self,
        user_id: str,
        name: str,
        *,
        display_name: str = "",
        real_name: str = "",
        team: str = TEAM,
        stranger: bool = False,
        admin: bool = False,
    ) -> None:
        """A person, as users.info describes them: of the workspace, or (another `team`) a Slack
        Connect member from elsewhere; `stranger` one who shares no channel with the workspace."""
        self.users[user_id] = {
            "id": user_id,
            "team_id": team,
            "name": name,
            "deleted": False,
            "real_name": real_name or name,
            "is_bot": False,
            "is_admin": admin,
            "is_owner": False,
            "is_primary_owner": False,
            "profile": {"display_name": display_name, "real_name": real_name or name, "team": team},
        }
        if stranger:
            self.users[user_id]["is_stranger"] = True

    def add_channel(self, channel_id: str, name: str, *, private: bool = True, ext_shared: bool = False) -> None:
        """A channel Parley is in, as conversations.info describes it."""
        self.channels[channel_id] = {
            "id": channel_id,
            "name": name,
            "is_channel": True,
            "is_group": False,
            "is_im": False,
            "is_mpim": False,
            "is_private": private,
            "is_archived": False,
            "is_general": False,
            "is_shared": ext_shared,
            "is_ext_shared": ext_shared,
            "is_org_shared": False,
            "is_pending_ext_shared": False,
            "context_team_id": TEAM,
            "shared_team_ids": [TEAM],
            "is_member": True,
        }

    def add_group(self, group_id: str, *members: str) -> None:
        """A user group (S...) and its members, for usergroups.users.list."""
        self.groups[group_id] = list(members)

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        found = self.channels.get(args.get("channel", ""))
        return {"ok": True, "channel": found} if found else {"ok": False, "error": "channel_not_found"}

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        members = self.groups.get(args.get("usergroup", ""))
        return (
            {"ok": True, "users": list(members)} if members is not None else {"ok": False, "error": "no_such_subteam"}
        )

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        if not args.get("user"):
            return {"ok": False, "error": "user_not_found"}
        ts = f"{2000000000 + next(self._ts)}.000100"
        self.ephemeral.append(
            Posted(args["channel"], ts, args.get("thread_ts") or None, args.get("text", ""), user=args["user"])
        )
        return {"ok": True, "message_ts": ts}

    def add_thread(self, channel: str, messages: list[dict[str, Any]]) -> str:
        """A thread someone else wrote (`message` events, oldest first, the first its parent), as
        conversations.replies serves it; returns its ts."""
        parent = messages[0]["ts"]
        self.threads[(channel, parent)] = [{**m, "thread_ts": parent} for m in messages]
        return parent

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        """One page of a thread, paged by an opaque cursor as Slack does (`has_more`, `next_cursor`)."""
        if args.get("channel") in self.not_in:
            return {"ok": False, "error": "not_in_channel"}
        found = self.threads.get((args.get("channel", ""), args.get("ts", "")))
        if found is None:
            return {"ok": False, "error": "thread_not_found"}
        return {"ok": True, **_page(found, args, default=1000, most=self.replies_page)}

    def add_history(self, channel: str, messages: list[dict[str, Any]]) -> None:
        """Messages of a channel (`message` events, any order), as conversations.history serves them."""
        self.histories.setdefault(channel, []).extend(messages)

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        """One page of a channel's messages, newest first, paged by an opaque cursor as Slack does;
        `oldest` and `latest` bound them (exclusive, as Slack's default)."""
        channel = args.get("channel", "")
        if channel in self.not_in:
            return {"ok": False, "error": "not_in_channel"}
        if channel not in self.histories:
            return {"ok": False, "error": "channel_not_found"}
        oldest, latest = float(args.get("oldest") or 0), float(args.get("latest") or "inf")
        found = sorted(
            (m for m in self.histories[channel] if oldest < float(m["ts"]) < latest),
            key=lambda m: float(m["ts"]),
            reverse=True,
        )
        return {
            "ok": True,
            "pin_count": 0,
            "channel_actions_ts": None,
            "channel_actions_count": 0,
            **_page(found, args, default=100, most=self.history_page),
        }

    def _chat_getPermalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("message_ts")
        if not channel or not ts:
            return {"ok": False, "error": "invalid_arguments"}
        return {
            "ok": True,
            "channel": channel,
            "permalink": f"https://fake.slack.test/archives/{channel}/p{ts.replace('.', '')}",
        }

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(args.get("user", ""))
        return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}

    # -- the assistant pane and App Home: checked as Slack checks them, and kept ---------------

    def _assistant_threads_setSuggestedPrompts(self, args: dict[str, Any]) -> dict[str, Any]:
        prompts = args.get("prompts")
        if not args.get("channel_id") or not isinstance(prompts, list) or not 1 <= len(prompts) <= 4:
            return {"ok": False, "error": "invalid_arguments"}
        if not all(isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts):
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True}

    def _assistant_threads_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("channel_id") or not args.get("thread_ts") or "status" not in args:
            return {"ok": False, "error": "invalid_arguments"}
        self.statuses.append((args["channel_id"], args["thread_ts"], args["status"]))
        return {"ok": True}

    def _assistant_threads_setTitle(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("channel_id") or not args.get("thread_ts") or not args.get("title"):
            return {"ok": False, "error": "invalid_arguments"}
        self.titles[(args["channel_id"], args["thread_ts"])] = args["title"]
        return {"ok": True}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not args.get("user_id") or not isinstance(view, dict) or view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        if len(view.get("blocks") or []) > 100:
            return {"ok": False, "error": "invalid_blocks"}
        self.homes[args["user_id"]] = view
        return {"ok": True, "view": {"id": "V0001", **view}}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        issued = _triggers.pop(args.get("trigger_id") or "", None)
        if issued is None:
            return {"ok": False, "error": "invalid_trigger_id"}
        if time.monotonic() - issued > TRIGGER_SECONDS:
            return {"ok": False, "error": "expired_trigger_id"}
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not isinstance(view, dict) or view.get("type") != "modal" or not 0 < len(view["title"]["text"]) <= 24:
            return {"ok": False, "error": "invalid_arguments"}
        blocks = view.get("blocks") or []
        options = [len(b["element"].get("options") or []) for b in blocks if b["type"] == "input"]
        if not blocks or len(blocks) > 100 or any(n > 100 for n in options):
            return {"ok": False, "error": "invalid_blocks"}
        if len(view.get("private_metadata") or "") > 3000:
            return {"ok": False, "error": "invalid_arguments"}
        opened = {"id": f"V{len(self.views) + 1:04d}", "team_id": self._caller.team, **view}
        self.views.append(opened)
        return {"ok": True, "view": opened}

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.url.replace("http://", "ws://") + "/socket"}

    def _new_message(self, args: dict[str, Any], text: str, *, streamed: bool = False) -> dict[str, Any]:
        ts = f"{2000000000 + next(self._ts)}.000100"
        blocks = args.get("blocks")
        if isinstance(blocks, str):  # form-encoded arguments carry Block Kit as a JSON string
            blocks = json.loads(blocks)
        self.messages.append(
            Posted(args["channel"], ts, args.get("thread_ts") or None, text, streamed=streamed, blocks=blocks)
        )
        return {"ok": True, "channel": args["channel"], "ts": ts}

    def _find(self, args: dict[str, Any]) -> Posted | None:
        return next((m for m in self.messages if m.channel == args.get("channel") and m.ts == args.get("ts")), None)

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("text"):
            return {"ok": False, "error": "no_text"}
        return self._new_message(args, args["text"])

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._find(args)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message.text = args["text"]
        if "blocks" in args:  # new blocks replace the old ones (an empty list removes them)
            blocks = args["blocks"]
            message.blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}

    def _chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.streaming:
            return {"ok": False, "error": "unknown_method"}
        if not args.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        return self._new_message(args, args.get("markdown_text", ""), streamed=True)

    def _chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._find(args)
        if not self.streaming:
            return {"ok": False, "error": "unknown_method"}
        if message is None or message.stopped:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message.text += args.get("markdown_text", "")
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        response = self._chat_appendStream(args)
        if response["ok"]:
            message = self._find(args)
            assert message is not None
            message.stopped = True
            if args.get("blocks"):  # shown under the streamed text (the feedback buttons)
                message.blocks = args["blocks"]
        return response

    # -- response_url -----------------------------------------------------------------------

    async def _response_url(self, request: web.Request) -> web.Response:
        if delay := self.latency.get("response_url"):
            await asyncio.sleep(delay)
        self.responses.append({"at": time.monotonic(), **await request.json()})
        await self._notify()
        return web.Response(text="ok")

    # -- Socket Mode ------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "fake"},
                "connection_info": {"app_id": "A0001"},
            }
        )
        await self._notify()
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if "envelope_id" in data:
                    self.acks.append(Ack(data["envelope_id"], time.monotonic(), data.get("payload") or {}))
                    await self._notify()
        self._sockets.remove(ws)
        return ws

    @property
    def connected(self) -> bool:
        return bool(self._sockets)

    async def push(self, kind: str, payload: dict[str, Any]) -> str:
        """Send an envelope (`events_api`, `slash_commands`) over the open socket; returns its id."""
        envelope_id = uuid.uuid4().hex
        await self._sockets[-1].send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "retry_attempt": 0,
                "retry_reason": "",
                "accepts_response_payload": kind != "events_api",
            }
        )
        return envelope_id

    def ack_of(self, envelope_id: str) -> Ack | None:
        return next((a for a in self.acks if a.envelope_id == envelope_id), None)


# -- what Slack sends -----------------------------------------------------------------------

_event_ids = itertools.count(1)
_message_ts = itertools.count(1)
TRIGGER_SECONDS = 3.0  # how long a trigger id opens a modal
_triggers: dict[str, float] = {}  # trigger ids issued (by the payloads below) -> when


def new_trigger() -> str:
    trigger = f"{next(_event_ids)}.{uuid.uuid4().hex[:8]}"
    _triggers[trigger] = time.monotonic()
    return trigger


def new_ts() -> str:
    return f"{1700000000 + next(_message_ts)}.000200"


def event_callback(
    event: dict[str, Any],
    *,
    team: str = TEAM,
    event_id: str | None = None,
    enterprise: str | None = None,
    org_wide: bool = False,
) -> dict[str, Any]:
    """The Events API envelope of `event` in workspace `team`; `enterprise`: the Grid org the
    workspace is in, `org_wide`: the installation it is sent for is the org's (Slack then names
    the org, not the workspace, in `authorizations`)."""
    body: dict[str, Any] = {
        "token": "unused-verification-token",
        "team_id": team,
        "api_app_id": "A0001",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_ids):08d}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": team, "user_id": BOT_USER, "is_bot": True}],
    }
    if enterprise is not None:
        body["enterprise_id"] = enterprise
        body["is_ext_shared_channel"] = False
        body["authorizations"] = [
            {
                "enterprise_id": enterprise,
                "team_id": None if org_wide else team,
                "user_id": f"UBOT{enterprise}" if org_wide else f"UBOT{team}",
                "is_bot": True,
                "is_enterprise_install": org_wide,
            }
        ]
    return body


def mention(
    channel: str, text: str, *, user: str = "UALICE", ts: str | None = None, thread_ts: str | None = None
) -> dict[str, Any]:
    event = {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts or new_ts(),
        "channel": channel,
        "team": TEAM,
    }
    event["event_ts"] = event["ts"]
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message(
    channel: str,
    text: str,
    *,
    user: str = "UALICE",
    channel_type: str = "channel",
    thread_ts: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    ts = extra.pop("ts", None) or new_ts()
    event = {
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel": channel,
        "channel_type": channel_type,
        "team": TEAM,
        **extra,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def reaction_added(
    channel: str, ts: str, *, reaction: str = "+1", user: str = "UALICE", item_user: str = BOT_USER
) -> dict[str, Any]:
    """A `reaction_added` event on message `ts` (written by `item_user`)."""
    event_ts = new_ts()
    return {
        "type": "reaction_added",
        "user": user,
        "reaction": reaction,
        "item_user": item_user,
        "item": {"type": "message", "channel": channel, "ts": ts},
        "event_ts": event_ts,
    }


def assistant_thread(
    kind: str, channel: str, thread_ts: str, *, user: str = "UALICE", viewing: str | None = None
) -> dict[str, Any]:
    """An `assistant_thread_started` or `assistant_thread_context_changed` event: `user` opened
    the assistant pane (a thread of their DM with Parley) beside channel `viewing`."""
    context: dict[str, Any] = {"channel_id": viewing, "team_id": TEAM, "enterprise_id": None} if viewing else {}
    return {
        "type": f"assistant_thread_{kind}",
        "assistant_thread": {"user_id": user, "context": context, "channel_id": channel, "thread_ts": thread_ts},
        "event_ts": new_ts(),
    }


def app_home_opened(user: str = "UALICE", *, tab: str = "home") -> dict[str, Any]:
    return {"type": "app_home_opened", "user": user, "channel": "D0042", "tab": tab, "event_ts": new_ts()}


def block_action(
    message: Posted, *, action_id: str, user: str = "UAGENT", value: str = "", block_id: str = "parley_ticket"
) -> dict[str, Any]:
    """The `block_actions` payload Slack sends when a person presses a button on `message`
    (delivered over HTTP as a signed form with one field, `payload`, holding this JSON)."""
    thread = {"thread_ts": message.thread_ts} if message.thread_ts else {}
    return {
        "type": "block_actions",
        "api_app_id": "A0001",
        "token": "unused",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "team": {"id": TEAM, "domain": "fake"},
        "container": {
            "type": "message",
            "message_ts": message.ts,
            "channel_id": message.channel,
            "is_ephemeral": False,
            **thread,
        },
        "channel": {"id": message.channel, "name": "support"},
        "message": {
            "type": "message",
            "ts": message.ts,
            "text": message.text,
            "blocks": message.blocks or [],
            "user": BOT_USER,
            "bot_id": BOT_ID,
            **thread,
        },
        "trigger_id": new_trigger(),
        "response_url": "https://hooks.slack.invalid/actions/unused",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": block_id,
                "value": value,
                "action_ts": str(time.time()),
                "text": {"type": "plain_text", "text": "Resolve"},
            }
        ],
    }


def feedback_press(message: Posted, *, positive: bool, user: str = "UALICE") -> dict[str, Any]:
    """The `block_actions` payload Slack sends when `user` presses the 👍 (`positive`) or 👎 of
    the `feedback_buttons` element on `message`: the pressed button's value, as the message gave it."""
    [block] = [b for b in message.blocks or [] if b["type"] == "context_actions"]
    [element] = [e for e in block["elements"] if e["type"] == "feedback_buttons"]
    button = element["positive_button" if positive else "negative_button"]
    payload = block_action(
        message,
        action_id=element["action_id"],
        user=user,
        value=button["value"],
        block_id=block.get("block_id") or uuid.uuid4().hex[:5],  # Slack makes one up when the block has none
    )
    payload["actions"][0] |= {"type": "feedback_buttons", "text": button["text"]}
    return payload


def message_action(callback_id: str, channel: str, message: dict[str, Any], *, user: str = "UALICE") -> dict[str, Any]:
    """The `message_action` payload Slack sends when `user` picks a message shortcut on `message`
    (a `message` event's fields; delivered as a signed form, like a button press)."""
    kept = ("type", "user", "text", "ts", "thread_ts", "files", "bot_id")
    return {
        "type": "message_action",
        "token": "unused",
        "action_ts": str(time.time()),
        "team": {"id": TEAM, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
        "channel": {"id": channel, "name": "general"},
        "is_enterprise_install": False,
        "enterprise": None,
        "callback_id": callback_id,
        "trigger_id": new_trigger(),
        "response_url": "https://hooks.slack.invalid/actions/unused",
        "message_ts": message["ts"],
        "message": {k: v for k, v in message.items() if k in kept},
    }


def sign(secret: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={digest}"


@dataclass
class Delivery:
    status: int
    text: str
    at: float  # monotonic time the response arrived


async def signed_request(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    *,
    secret: str,
    form: bool = False,
    timestamp: int | None = None,
    retry_num: int | None = None,
    signature: str | None = None,
) -> Delivery:
    """POST a payload as Slack does: JSON for events, a form for slash commands, signed."""
    body = urlencode(payload) if form else json.dumps(payload)
    ts = str(timestamp if timestamp is not None else int(time.time()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature if signature is not None else sign(secret, ts, body),
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    async with session.post(url, data=body.encode(), headers=headers) as response:
        text = await response.text()
        return Delivery(response.status, text, time.monotonic())


def command(text: str, *, channel: str = "D0001", response_url: str, user: str = "UALICE") -> dict[str, Any]:
    return {
        "token": "unused",
        "team_id": TEAM,
        "team_domain": "fake",
        "channel_id": channel,
        "channel_name": "directmessage",
        "user_id": user,
        "user_name": "alice",
        "command": "/parley",
        "text": text,
        "api_app_id": "A0001",
        "response_url": response_url,
        "trigger_id": new_trigger(),
    }


def view_submission(view: dict[str, Any], values: dict[str, dict[str, Any]], *, user: str = "UALICE") -> dict[str, Any]:
    """The `view_submission` payload Slack sends when `user` submits modal `view` (as views.open
    kept it): `values` by block id, then action id, as `view.state.values` holds them
    (`{"type": "plain_text_input", "value": ...}`, `{"type": "static_select", "selected_option": ...}`)."""
    team = view.get("team_id") or TEAM
    return {
        "type": "view_submission",
        "team": {"id": team, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team},
        "api_app_id": "A0001",
        "token": "unused",
        "trigger_id": new_trigger(),
        "view": {**view, "state": {"values": values}, "hash": uuid.uuid4().hex, "app_id": "A0001", "bot_id": BOT_ID},
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def _page(found: list[dict[str, Any]], args: dict[str, Any], *, default: int, most: int) -> dict[str, Any]:
    """One page of `found` as Slack's cursor-paged methods return it: the `limit` asked for (or
    `default`, at most `most`), from the opaque `cursor` on, and the cursor of the next page."""
    start = int(base64.b64decode(args["cursor"]).decode().removeprefix("offset:")) if args.get("cursor") else 0
    size = min(int(args.get("limit") or default), most)
    more = start + size < len(found)
    cursor = base64.b64encode(f"offset:{start + size}".encode()).decode() if more else ""
    return {"messages": found[start : start + size], "has_more": more, "response_metadata": {"next_cursor": cursor}}
