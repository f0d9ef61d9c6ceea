"""A fake Discord on loopback that speaks the real protocols, for running discord.py unmodified.

One aiohttp server: the REST API under /api/v10 and the WebSocket gateway at /.
The gateway does HELLO, heartbeat ACK, IDENTIFY -> READY + GUILD_CREATE for the
shard's guilds, RESUME (replaying what the session missed), RECONNECT on demand,
and dispatches MESSAGE_CREATE (users' and the bot's own), THREAD_CREATE (a forum post:
`post`) and INTERACTION_CREATE (slash commands and their subcommands, with the member's
permissions; message commands on a message: `message_command`, and presses of a message's
buttons: `press`). Channels may be filed under a category (`add_category`).
Without the Message Content intent it withholds message text as Discord does.
REST records every call, answers with rate-limit headers from real per-route
buckets, enforces message nonces, and can be told to answer 429 (per route or
global) the way Discord does, a 5xx, or an error of Discord's own (403 Missing
Access), and to hold a call's answer back until the test lets it go. Messages keep their
components (buttons) as posted and edited; interaction callbacks of types 4-7 act as Discord's.

What discord.py needs, measured: JSON only with Content-Type exactly
`application/json`; a 429 is a rate limit only with a `Via` header and a JSON body
with `retry_after` (else it is taken for a Cloudflare ban); READY needs v, user,
session_id, resume_gateway_url, guilds and application; GUILD_CREATE needs roles
(@everyone has the guild's id), channels with permission_overwrites, and the
bot's member.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1420070400000
MESSAGE_CONTENT = 1 << 15
GATEWAY_MESSAGE_CONTENT = 1 << 18
ALL_PERMISSIONS = str((1 << 50) - 1)
Json = dict[str, Any]


def iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), UTC).isoformat()


@dataclass
class Call:
    method: str
    path: str  # below /api/v10
    body: Any
    status: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    retry_after: float
    is_global: bool
    times: int  # -1: until lifted
    status: int = 429
    code: int = 0  # Discord's JSON error code
    message: str = ""


@dataclass
class Session:
    id: str
    shard: int
    shard_count: int
    intents: int
    ws: web.WebSocketResponse | None = None
    seq: int = 0
    sent: list[Json] = field(default_factory=list)  # every dispatch, for RESUME replays


@dataclass
class Bucket:
    limit: int
    window: float
    remaining: int = 0
    resets_at: float = 0.0


class FakeDiscord:
    def __init__(self, *, content_intent: bool = True, bucket_limit: int = 50, bucket_window: float = 1.0) -> None:
        self._ids = itertools.count(1)
        self.content_intent = content_intent
        self.bucket_limit = bucket_limit
        self.bucket_window = bucket_window
        self.app_id = self.snowflake()
        self.token = "fake-bot-token"
        self.bot = self.make_user("Parley", bot=True)
        self.guilds: dict[int, Json] = {}
        self.channels: dict[int, Json] = {}
        self.messages: dict[int, Json] = {}
        self.threads_by_message: dict[int, int] = {}
        self.interactions: dict[str, Json] = {}  # by token
        self.commands: dict[str, list[Json]] = {}  # "global" or guild id
        self.calls: list[Call] = []
        self.identifies: list[Json] = []
        self.resumes: list[Json] = []
        self.sessions: dict[str, Session] = {}
        self.unplanned_429s = 0  # a client that honours the bucket headers never gets one
        self._nonces: dict[tuple[int, str], int] = {}
        self._faults: list[Fault] = []
        self._holds: list[tuple[str, re.Pattern[str], asyncio.Event]] = []
        self._buckets: dict[str, Bucket] = {}
        self._shard_count = 1
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/", self._gateway)
        api = "/api/v10"
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/gateway/bot", self._gateway_bot),
            ("GET", "/gateway", self._gateway_plain),
            ("PUT", "/applications/{app}/commands", self._put_commands),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._put_commands),
            ("POST", "/channels/{channel}/messages", self._create_message),
            ("PATCH", "/channels/{channel}/messages/{message}", self._edit_message),
            ("POST", "/channels/{channel}/messages/{message}/threads", self._create_thread),
            ("POST", "/interactions/{interaction}/{token}/callback", self._interaction_callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("PATCH", "/webhooks/{app}/{token}/messages/{message}", self._edit_webhook_message),
            ("DELETE", "/webhooks/{app}/{token}/messages/{message}", self._delete_webhook_message),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, api + path, handler)
        app.router.add_route("*", api + "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base_url(self) -> str:
        return self.url + "/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/"

    # -- the world -----------------------------------------------------------------------

    def snowflake(self) -> int:
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._ids) & 0x3FFFFF)

    def make_user(self, name: str, *, bot: bool = False) -> Json:
        return {
            "id": str(self.snowflake()),
            "username": name,
            "discriminator": "0",
            "global_name": name,
            "avatar": None,
            "bot": bot,
        }

    def add_guild(self, name: str, *, shard: int = 0, shard_count: int = 1, channels: int = 2) -> Json:
        """A guild whose id puts it on `shard` of `shard_count` ((id >> 22) % count)."""
        base = 1000 + len(self.guilds) * shard_count
        gid = ((base - base % shard_count + shard) << 22) | 1
        self_role = {
            "id": str(self.snowflake()),
            "name": "Parley",
            "permissions": ALL_PERMISSIONS,
            "position": 1,
            "color": 0,
            "hoist": False,
            "managed": True,
            "mentionable": True,
            "flags": 0,
            "tags": {"bot_id": self.bot["id"]},
        }
        guild: Json = {
            "id": str(gid),
            "name": name,
            "icon": None,
            "owner_id": str(self.snowflake()),
            "unavailable": False,
            "member_count": 2,
            "large": False,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [
                {
                    "id": str(gid),
                    "name": "@everyone",
                    "permissions": ALL_PERMISSIONS,
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                },
                self_role,
            ],
            "channels": [],
            "threads": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "premium_tier": 0,
            "verification_level": 0,
            "members": [
                {
                    "user": self.bot,
                    "roles": [self_role["id"]],
                    "joined_at": iso(),
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                }
            ],
        }
        for i in range(channels):
            channel = {
                "id": str(self.snowflake()),
                "type": 0,
                "guild_id": str(gid),
                "name": f"general-{i}",
                "position": i,
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
                "topic": None,
            }
            guild["channels"].append(channel)
            self.channels[int(channel["id"])] = channel
        self.guilds[gid] = guild
        return guild

    def add_forum(self, guild: Json, name: str = "questions") -> Json:
        """A forum channel (type 15) in `guild` (before Parley connects: it reads channels at IDENTIFY)."""
        return self._guild_channel(
            guild,
            15,
            name,
            topic=None,
            available_tags=[],
            default_reaction_emoji=None,
            default_thread_rate_limit_per_user=0,
            default_sort_order=None,
            default_forum_layout=0,
        )

    def add_category(self, guild: Json, *channels: Json, name: str = "support") -> Json:
        """A category (type 4) in `guild`, with `channels` (of the guild) moved into it (before
        Parley connects: it reads channels at IDENTIFY)."""
        category = self._guild_channel(guild, 4, name)
        for channel in channels:
            channel["parent_id"] = category["id"]
        return category

    def _guild_channel(self, guild: Json, kind: int, name: str, **fields: Any) -> Json:
        """A channel of `kind` added to `guild`, with the fields every guild channel has and `fields`."""
        channel = {
            "id": str(self.snowflake()),
            "type": kind,
            "guild_id": guild["id"],
            "name": name,
            "position": len(guild["channels"]),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "flags": 0,
            **fields,
        }
        guild["channels"].append(channel)
        self.channels[int(channel["id"])] = channel
        return channel

    def dm_channel(self, user: Json) -> Json:
        for channel in self.channels.values():
            if channel["type"] == 1 and channel["recipients"][0]["id"] == user["id"]:
                return channel
        channel = {"id": str(self.snowflake()), "type": 1, "recipients": [user], "last_message_id": None}
        self.channels[int(channel["id"])] = channel
        return channel

    def shard_of(self, channel: Json) -> int:
        gid = channel.get("guild_id")
        return (int(gid) >> 22) % self._shard_count if gid else 0

    # -- what users do -------------------------------------------------------------------

    async def say(
        self,
        channel: Json,
        author: Json,
        content: str,
        *,
        mention_bot: bool = False,
        reply_to: Json | None = None,
        mention_role: bool = False,
        attachments: int = 0,
    ) -> Json:
        """A user posts a message (MESSAGE_CREATE on the channel's shard)."""
        mentions = []
        mention_roles = []
        if mention_bot:
            content = f"<@{self.bot['id']}> {content}"
            mentions.append(self.bot)
        if mention_role:
            role = self.guilds[int(channel["guild_id"])]["roles"][1]
            content = f"<@&{role['id']}> {content}"
            mention_roles.append(role["id"])
        message = self._message(
            channel, author, content, mentions=mentions, mention_roles=mention_roles, reply_to=reply_to
        )
        message["attachments"] = [
            {
                "id": str(self.snowflake()),
                "filename": f"f{i}.png",
                "size": 1,
                "url": "http://x/f.png",
                "proxy_url": "http://x/f.png",
            }
            for i in range(attachments)
        ]
        await self.dispatch("MESSAGE_CREATE", message, shard=self.shard_of(channel))
        return message

    async def post(self, forum: Json, author: Json, title: str, content: str) -> Json:
        """A user opens a post in a forum: THREAD_CREATE of the post (a public thread whose owner
        is the author), then MESSAGE_CREATE of its first message, which has the post's id."""
        thread_id = self.snowflake()
        thread = {
            "id": str(thread_id),
            "type": 11,
            "guild_id": forum["guild_id"],
            "parent_id": forum["id"],
            "name": title,
            "owner_id": author["id"],
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "applied_tags": [],
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": iso(),
                "locked": False,
            },
        }
        self.channels[thread_id] = thread
        shard = self.shard_of(forum)
        await self.dispatch("THREAD_CREATE", dict(thread, newly_created=True), shard=shard)
        message = self._message(thread, author, content)
        del self.messages[int(message["id"])]
        message["id"] = str(thread_id)
        self.messages[thread_id] = message
        await self.dispatch("MESSAGE_CREATE", message, shard=shard)
        return thread

    async def react(self, message: Json, user: Json, emoji: str) -> Json:
        """A user adds a (unicode) reaction to a message (MESSAGE_REACTION_ADD, as Discord sends it)."""
        channel = self.channels[int(message["channel_id"])]
        data: Json = {
            "user_id": user["id"],
            "channel_id": message["channel_id"],
            "message_id": message["id"],
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "burst_colors": [],
            "type": 0,
            "message_author_id": message["author"]["id"],
        }
        if channel.get("guild_id"):
            data["guild_id"] = channel["guild_id"]
            data["member"] = {"user": user, "roles": [], "joined_at": iso(), "deaf": False, "mute": False, "flags": 0}
        await self.dispatch("MESSAGE_REACTION_ADD", data, shard=self.shard_of(channel))
        return data

    async def slash(
        self,
        channel: Json,
        user: Json,
        name: str,
        *,
        subcommand: str | None = None,
        permissions: int | None = None,
        **options: str,
    ) -> Json:
        """A user runs a slash command (INTERACTION_CREATE), or one of its `subcommand`s, with
        string options; `permissions`: the member's in the channel (a bitfield; default: all)."""
        given = [{"name": k, "type": 3, "value": v} for k, v in options.items()]
        if subcommand is not None:
            given = [{"name": subcommand, "type": 1, "options": given}]
        data = {"id": str(self.snowflake()), "name": name, "type": 1, "options": given}
        return await self._interact(channel, user, 2, data, permissions=permissions)

    async def message_command(self, channel: Json, user: Json, name: str, message: Json) -> Json:
        """A user runs the message command `name` on `message` (right-click, Apps): INTERACTION_CREATE
        of an APPLICATION_COMMAND whose data is of type 3, with the message resolved."""
        data = {
            "id": str(self.snowflake()),
            "name": name,
            "type": 3,
            "target_id": message["id"],
            "resolved": {"messages": {message["id"]: message}},
        }
        return await self._interact(channel, user, 2, data)

    async def press(self, message: Json, user: Json, label: str | None = None, *, custom_id: str | None = None) -> Json:
        """A user presses the button labelled `label` on `message` (or one with `custom_id`, which
        need not be on it): INTERACTION_CREATE of type 3 (MESSAGE_COMPONENT) with the message as
        Discord sends it now."""
        if custom_id is None:
            custom_id = next(b["custom_id"] for b in self.buttons(message) if b.get("label") == label)
        channel = self.channels[int(message["channel_id"])]
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(channel, user, 3, data, message=dict(self.messages[int(message["id"])]))

    async def _interact(
        self,
        channel: Json,
        user: Json,
        kind: int,
        data: Json,
        *,
        message: Json | None = None,
        permissions: int | None = None,
    ) -> Json:
        token = f"itoken-{uuid.uuid4().hex}"
        # The member's permissions in the channel, overwrites applied, as Discord computes them.
        granted = ALL_PERMISSIONS if permissions is None else str(permissions)
        interaction: Json = {
            "id": str(self.snowflake()),
            "application_id": str(self.app_id),
            "type": kind,
            "token": token,
            "version": 1,
            "channel_id": channel["id"],
            "channel": dict(channel, permissions=granted),
            "data": data,
            "app_permissions": ALL_PERMISSIONS,
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {},
            "attachment_size_limit": 8_000_000,
        }
        if message is not None:
            interaction["message"] = message
        if channel.get("guild_id"):
            interaction["guild_id"] = channel["guild_id"]
            interaction["guild_locale"] = "en-US"
            interaction["context"] = 0
            interaction["member"] = {
                "user": user,
                "roles": [],
                "permissions": granted,
                "joined_at": iso(),
                "deaf": False,
                "mute": False,
                "flags": 0,
            }
        else:
            interaction["context"] = 1
            interaction["user"] = user
        self.interactions[token] = interaction
        await self.dispatch("INTERACTION_CREATE", interaction, shard=self.shard_of(channel))
        return interaction

    def _message(
        self,
        channel: Json,
        author: Json,
        content: str,
        *,
        mentions: list[Json] = (),  # type: ignore[assignment]
        mention_roles: list[str] = (),
        reply_to: Json | None = None,
        nonce: str | None = None,  # type: ignore[assignment]
        flags: int = 0,
        interaction: Json | None = None,
        components: list[Json] | None = None,
    ) -> Json:
        message: Json = {
            "id": str(self.snowflake()),
            "channel_id": channel["id"],
            "author": author,
            "content": content,
            "timestamp": iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": list(mentions),
            "mention_roles": list(mention_roles),
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": flags,
            "components": list(components or []),
        }
        if channel.get("guild_id"):
            message["guild_id"] = channel["guild_id"]
            if not author.get("bot"):
                message["member"] = {"roles": [], "joined_at": iso(), "deaf": False, "mute": False, "flags": 0}
        if reply_to is not None:
            message["type"] = 19
            message["message_reference"] = {
                "type": 0,
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
                "guild_id": channel.get("guild_id"),
            }
            message["referenced_message"] = {k: v for k, v in reply_to.items() if k != "referenced_message"}
        if nonce is not None:
            message["nonce"] = nonce
        if interaction is not None:
            message["webhook_id"] = str(self.app_id)
            message["application_id"] = str(self.app_id)
            message["type"] = 20
            message["interaction_metadata"] = {
                "id": interaction["id"],
                "type": interaction["type"],
                "user": self._invoker(interaction),
                "authorizing_integration_owners": {},
            }
        self.messages[int(message["id"])] = message
        return message

    @staticmethod
    def _invoker(interaction: Json) -> Json:
        return interaction["member"]["user"] if "member" in interaction else interaction["user"]

    # -- what tests read -----------------------------------------------------------------

    def bot_messages(self, channel_id: str | None = None) -> list[Json]:
        return [
            m
            for m in self.messages.values()
            if m["author"]["id"] == self.bot["id"] and (channel_id is None or m["channel_id"] == channel_id)
        ]

    @staticmethod
    def buttons(message: Json) -> list[Json]:
        """The buttons on a message, in order, as it was last posted or edited."""
        return [c for row in message.get("components", []) for c in row.get("components", []) if c["type"] == 2]

    def interaction_responses(self) -> list[Call]:
        """The answers to interactions (POST /interactions/{id}/{token}/callback), in order."""
        return self.calls_to("POST", r"/interactions/\d+/itoken-\w+/callback")

    def replies_to(self, message: Json) -> list[Json]:
        return [m for m in self.bot_messages() if m.get("message_reference", {}).get("message_id") == message["id"]]

    def calls_to(self, method: str, pattern: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and re.fullmatch(pattern, c.path)]

    def session_for(self, shard: int) -> Session:
        return [s for s in self.sessions.values() if s.shard == shard][-1]

    # -- faults and gateway control ------------------------------------------------------

    def rate_limit(
        self, method: str, pattern: str, *, retry_after: float = 0.3, is_global: bool = False, times: int = 1
    ) -> None:
        """Answer the next `times` calls matching `method` and the path regex with a 429."""
        self._faults.append(Fault(method, re.compile(pattern), retry_after, is_global, times))

    def server_error(self, method: str, pattern: str, *, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` calls matching `method` and the path regex with `status` (a 5xx)."""
        self._faults.append(Fault(method, re.compile(pattern), 0.0, False, times, status))

    def refuse(
        self,
        method: str,
        pattern: str,
        *,
        status: int = 403,
        code: int = 50001,
        message: str = "Missing Access",
        times: int = -1,
    ) -> Fault:
        """Answer calls matching `method` and the path regex with Discord's error `code` (by default
        403 Missing Access, what a guild where the bot lacks a scope says), until `lift`ed."""
        fault = Fault(method, re.compile(pattern), 0.0, False, times, status, code, message)
        self._faults.append(fault)
        return fault

    def lift(self, fault: Fault) -> None:
        if fault in self._faults:
            self._faults.remove(fault)

    def hold(self, method: str, pattern: str) -> asyncio.Event:
        """Keep the answer to the next call matching `method` and the path regex until the
        returned event is set (the call is recorded when it arrives)."""
        release = asyncio.Event()
        self._holds.append((method, re.compile(pattern), release))
        return release

    async def send_reconnect(self, shard: int = 0) -> None:
        """Op 7 RECONNECT: the client must reconnect and RESUME its session."""
        session = self.session_for(shard)
        assert session.ws is not None
        await session.ws.send_str(json.dumps({"op": 7, "d": None}))

    async def replay(self, shard: int, seq: int) -> None:
        """Send a dispatch again (Discord may, around a resume): the client must not answer twice."""
        session = self.session_for(shard)
        payload = next(p for p in session.sent if p["s"] == seq)
        session.seq += 1
        again = dict(payload, s=session.seq)
        session.sent.append(again)
        assert session.ws is not None
        await session.ws.send_str(json.dumps(again))

    async def dispatch(self, event: str, data: Json, *, shard: int = 0) -> None:
        sessions = [s for s in self.sessions.values() if s.shard == shard]
        if not sessions:
            return
        session = sessions[-1]
        data = self._as_seen(session, event, data)
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.sent.append(payload)
        if session.ws is not None and not session.ws.closed:
            await session.ws.send_str(json.dumps(payload))
        # else: kept for the RESUME that replays it

    def _as_seen(self, session: Session, event: str, data: Json) -> Json:
        """Without the Message Content intent Discord withholds the text, except in DMs,
        mentions of the bot and the bot's own messages."""
        if event != "MESSAGE_CREATE" or session.intents & MESSAGE_CONTENT:
            return data
        if "guild_id" not in data or data["author"]["id"] == self.bot["id"]:
            return data
        if any(u["id"] == self.bot["id"] for u in data["mentions"]):
            return data
        return dict(data, content="", attachments=[], embeds=[])

    # -- gateway -------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        session: Session | None = None
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            op, d = frame["op"], frame.get("d")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                session = await self._identify(ws, d)
                if session is None:
                    break
            elif op == 6:
                session = await self._resume(ws, d)
        if session is not None and session.ws is ws:
            session.ws = None
        return ws

    async def _identify(self, ws: web.WebSocketResponse, d: Json) -> Session | None:
        self.identifies.append(d)
        if d["token"] != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        if d["intents"] & MESSAGE_CONTENT and not self.content_intent:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        shard, count = d.get("shard", [0, 1])
        self._shard_count = count
        session = Session(uuid.uuid4().hex, shard, count, d["intents"], ws=ws)
        self.sessions[session.id] = session
        guilds = [g for gid, g in self.guilds.items() if (gid >> 22) % count == shard]
        await self.dispatch(
            "READY",
            {
                "v": 10,
                "user": self.bot,
                "session_id": session.id,
                "resume_gateway_url": self.gateway_url,
                "guilds": [{"id": g["id"], "unavailable": True} for g in guilds],
                "shard": [shard, count],
                "application": {"id": str(self.app_id), "flags": self._app_flags()},
                "private_channels": [],
                "relationships": [],
                "user_settings": {},
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": [],
            },
            shard=shard,
        )
        for guild in guilds:
            await self.dispatch("GUILD_CREATE", guild, shard=shard)
        return session

    async def _resume(self, ws: web.WebSocketResponse, d: Json) -> Session | None:
        self.resumes.append(d)
        session = self.sessions.get(d["session_id"])
        if session is None or d["token"] != self.token:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return None
        session.ws = ws
        for payload in session.sent:
            if payload["s"] > (d["seq"] or 0):
                await ws.send_str(json.dumps(payload))
        await self.dispatch("RESUMED", {}, shard=session.shard)
        return session

    def _app_flags(self) -> int:
        return GATEWAY_MESSAGE_CONTENT if self.content_intent else 0

    # -- REST ----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path == "/":
            return await handler(request)
        path = request.path.removeprefix("/api/v10")
        body = await request.json() if request.can_read_body and request.content_type == "application/json" else None
        call = Call(request.method, path, body)
        self.calls.append(call)
        fault = next((f for f in self._faults if f.method == request.method and f.pattern.fullmatch(path)), None)
        if fault is not None:
            fault.times -= 1
            if fault.times == 0:
                self._faults.remove(fault)
            call.status = fault.status
            if fault.status != 429:
                return self._error(fault.status, fault.code, fault.message or f"{fault.status}: Server Error")
            return self._too_many(fault.retry_after, is_global=fault.is_global)
        held = next((h for h in self._holds if h[0] == request.method and h[1].fullmatch(path)), None)
        if held is not None:
            self._holds.remove(held)
            await held[2].wait()
        bucket_key, bucket = self._bucket(request.method, path)
        now = time.monotonic()
        if now >= bucket.resets_at:
            bucket.remaining, bucket.resets_at = bucket.limit, now + bucket.window
        if bucket.remaining <= 0:
            self.unplanned_429s += 1
            call.status = 429
            return self._too_many(bucket.resets_at - now, is_global=False)
        bucket.remaining -= 1
        response = await handler(request)
        call.status = response.status
        response.headers.update(
            {
                "X-RateLimit-Limit": str(bucket.limit),
                "X-RateLimit-Remaining": str(bucket.remaining),
                "X-RateLimit-Reset-After": f"{bucket.resets_at - now:.3f}",
                "X-RateLimit-Reset": f"{time.time() + bucket.resets_at - now:.3f}",
                "X-RateLimit-Bucket": hashlib.sha1(bucket_key.split("|")[0].encode()).hexdigest()[:16],
            }
        )
        return response

    def _bucket(self, method: str, path: str) -> tuple[str, Bucket]:
        # One bucket per route and major parameter (channel, guild, webhook and token), as Discord keeps them.
        route = re.sub(r"\d{6,}|itoken-\w+|@original", "{}", path)
        major = re.search(r"(?:channels|guilds|webhooks)/\d+(?:/itoken-\w+)?", path)
        key = f"{method} {route}|{major.group(0) if major else ''}"
        if key not in self._buckets:
            self._buckets[key] = Bucket(self.bucket_limit, self.bucket_window)
        return key, self._buckets[key]

    @staticmethod
    def _too_many(retry_after: float, *, is_global: bool) -> web.Response:
        body = {"message": "You are being rate limited.", "retry_after": round(retry_after, 3), "global": is_global}
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        return FakeDiscord._json(body, status=429, headers=headers)

    @staticmethod
    def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        # Exactly `application/json`: discord.py does not parse `application/json; charset=utf-8`.
        return web.Response(
            body=json.dumps(data).encode(),
            status=status,
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def _error(self, status: int, code: int, message: str) -> web.Response:
        return self._json({"message": message, "code": code}, status=status)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _me(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 0, "401: Unauthorized")
        return self._json(self.bot)

    async def _application(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "id": str(self.app_id),
                "name": "Parley",
                "icon": None,
                "description": "",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.make_user("owner"),
                "summary": "",
                "verify_key": "0" * 64,
                "team": None,
                "flags": self._app_flags(),
                "bot": self.bot,
            }
        )

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
            }
        )

    async def _gateway_plain(self, request: web.Request) -> web.Response:
        return self._json({"url": self.gateway_url})

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = request.match_info.get("guild", "global")
        commands = [
            dict(
                c,
                id=str(self.snowflake()),
                application_id=str(self.app_id),
                version="1",
                # Discord answers with the bitfield as a string, or null for "everyone".
                default_member_permissions=None
                if c.get("default_member_permissions") is None
                else str(c["default_member_permissions"]),
                type=c.get("type", 1),
                description=c.get("description", ""),  # message commands have none; Discord says ""
            )
            for c in await request.json()
        ]
        if scope != "global":
            for c in commands:
                c["guild_id"] = scope
        self.commands[scope] = commands
        return self._json(commands)

    async def _create_message(self, request: web.Request) -> web.Response:
        channel = self.channels.get(int(request.match_info["channel"]))
        if channel is None:
            return self._error(404, 10003, "Unknown Channel")
        body = await request.json()
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce") and (int(channel["id"]), nonce) in self._nonces:
            return self._json(self.messages[self._nonces[(int(channel["id"]), nonce)]])
        ref = body.get("message_reference")
        reply_to = self.messages.get(int(ref["message_id"])) if ref else None
        message = self._message(
            channel,
            self.bot,
            body.get("content", ""),
            reply_to=reply_to,
            nonce=nonce,
            components=body.get("components"),
        )
        if nonce is not None:
            self._nonces[(int(channel["id"]), nonce)] = int(message["id"])
        await self.dispatch("MESSAGE_CREATE", message, shard=self.shard_of(channel))
        return self._json(message)

    async def _edit_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(int(request.match_info["message"]))
        if message is None or message["channel_id"] != request.match_info["channel"]:
            return self._error(404, 10008, "Unknown Message")
        if message["author"]["id"] != self.bot["id"]:
            return self._error(403, 50005, "Cannot edit a message authored by another user")
        return self._json(self._update(message, await request.json()))

    def _update(self, message: Json, body: Json) -> Json:
        if "content" in body:
            message["content"] = body["content"]
        if "components" in body:
            message["components"] = list(body["components"] or [])
        message["edited_timestamp"] = iso()
        message["flags"] = message.get("flags", 0) & ~128  # no longer "thinking"
        return message

    async def _create_thread(self, request: web.Request) -> web.Response:
        parent = self.channels.get(int(request.match_info["channel"]))
        message_id = int(request.match_info["message"])
        if parent is None or message_id not in self.messages:
            return self._error(404, 10008, "Unknown Message")
        if message_id in self.threads_by_message:
            return self._error(400, 160004, "A thread has already been created for this message")
        body = await request.json()
        thread = {
            "id": str(message_id),
            "type": 11,
            "guild_id": parent["guild_id"],
            "parent_id": parent["id"],
            "name": body["name"],
            "owner_id": self.bot["id"],
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": body.get("auto_archive_duration", 1440),
                "archive_timestamp": iso(),
                "locked": False,
            },
        }
        self.channels[message_id] = thread
        self.threads_by_message[message_id] = message_id
        await self.dispatch("THREAD_CREATE", dict(thread, newly_created=True), shard=self.shard_of(parent))
        return self._json(thread, status=201)

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        """Type 5 (a deferred answer, "thinking…") and 4 (a message) create the response message;
        type 6 (a deferred update of a pressed message) makes that message the original, and
        type 7 edits it at once."""
        interaction = self.interactions.get(request.match_info["token"])
        if interaction is None or interaction["id"] != request.match_info["interaction"]:
            return self._error(404, 10062, "Unknown interaction")
        if "response" in interaction:
            return self._error(400, 40060, "Interaction has already been acknowledged.")
        body = await request.json()
        kind, data = body["type"], body.get("data") or {}
        if kind in (6, 7) and "message" not in interaction:
            return self._error(400, 50035, "Invalid Form Body (type 6/7 answer only a component)")
        interaction["response"] = body
        flags = data.get("flags", 0)
        channel = self.channels[int(interaction["channel_id"])]
        if kind in (6, 7):
            original = self.messages[int(interaction["message"]["id"])]
            if kind == 7:
                self._update(original, data)
        else:
            thinking = 128 if kind == 5 else 0
            original = self._message(
                channel,
                self.bot,
                data.get("content", ""),
                flags=flags | thinking,
                interaction=interaction,
                components=data.get("components"),
            )
        interaction["original"] = original["id"]
        return self._json(
            {
                "interaction": {
                    "id": interaction["id"],
                    "type": interaction["type"],
                    "response_message_id": original["id"],
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(flags & 64),
                },
                "resource": {"type": kind, "message": original},
            }
        )

    def _webhook_message(self, request: web.Request) -> tuple[Json | None, Json | None]:
        interaction = self.interactions.get(request.match_info["token"])
        if interaction is None or request.match_info["app"] != str(self.app_id):
            return None, None
        mid = request.match_info.get("message")
        if mid == "@original":
            mid = interaction.get("original")
        return interaction, self.messages.get(int(mid)) if mid else None

    async def _followup(self, request: web.Request) -> web.Response:
        interaction, _ = self._webhook_message(request)
        if interaction is None or "response" not in interaction:
            return self._error(404, 10015, "Unknown Webhook")
        body = await request.json()
        channel = self.channels[int(interaction["channel_id"])]
        message = self._message(
            channel,
            self.bot,
            body.get("content", ""),
            interaction=interaction,
            flags=body.get("flags", 0),
            components=body.get("components"),
        )
        return self._json(message)

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        interaction, message = self._webhook_message(request)
        if interaction is None or message is None:
            return self._error(404, 10008, "Unknown Message")
        return self._json(self._update(message, await request.json()))

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        interaction, message = self._webhook_message(request)
        if interaction is None or message is None:
            return self._error(404, 10008, "Unknown Message")
        del self.messages[int(message["id"])]
        return web.Response(status=204)

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error(404, 0, "404: Not Found")


async def wait_until(predicate: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; its value. Generous timeouts: the machine may be busy."""
    async with asyncio.timeout(timeout):
        while not (value := predicate()):
            await asyncio.sleep(interval)
    return value
