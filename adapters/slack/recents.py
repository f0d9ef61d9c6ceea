"""The conversations each person had with Parley lately, which their App Home tab lists.

The intake records a conversation when it takes a person's turn in it (`Recents.add`): a channel
thread, a DM (or a thread of one), an assistant-pane thread. Its first question is its title and
its first message the one the Home tab links to; each later turn only moves it to the top. The
Home tab reads the newest few (`Recents.recent`) when it is opened.

Bounded, and namespaced by tenant and person: `KEEP` conversations per person in a workspace (the
one least recently active is dropped), titles cut to `TITLE_CHARS`, and everything of a person
expires `ttl` seconds after their last turn. In Redis when the runtime has one, under its key
prefix (shared by every replica, kept across restarts):

    {prefix}:slack:recent:{tenant}:{user}        sorted set: "{channel}:{thread}" -> time of its last turn
    {prefix}:slack:recent:{tenant}:{user}:about  hash: "{channel}:{thread}" -> JSON title, ts, kind

written together by one script, so the two never disagree about which conversations are kept.
Without Redis, a bounded map in this process (`MemoryRecents`), lost on restart.

A failure to record or read is logged and costs only the list: a turn is never refused for it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from adapters.slack.normalize import PANE, TITLE_CHARS, is_dm
from bot.store.redis import as_text
from bot.turns import Turn

log = logging.getLogger(__name__)

KEEP = 10  # conversations kept per person and workspace (the Home tab shows fewer)


@dataclass(frozen=True, slots=True)
class Recent:
    """A conversation a person had with Parley."""

    channel: str
    thread: str  # "" for a DM's top level
    title: str  # its first question, cut to TITLE_CHARS
    ts: str  # the message a link opens: the thread's parent, or the DM's first message
    kind: str  # channel | dm | pane
    at: float  # unix time of its last turn


class Recents(Protocol):
    async def add(self, turn: Turn) -> None:
        """Record the conversation of a person's turn, or move it to the top. Never raises."""
        ...

    async def recent(self, tenant: str, user: str, count: int) -> list[Recent]:
        """The person's `count` most recently active conversations in `tenant`, newest first
        ([] when the store cannot be read)."""
        ...


def recent_of(turn: Turn) -> Recent:
    kind = "pane" if turn.handle.get(PANE) else "dm" if is_dm(turn.channel) else "channel"
    return Recent(
        channel=turn.channel,
        thread=turn.thread,
        title=" ".join(turn.text.split())[:TITLE_CHARS],
        ts=turn.thread or turn.reply_to or "",
        kind=kind,
        at=turn.at,
    )


# KEYS: the sorted set, the hash. ARGV: member, time, about (JSON), keep, ttl. A retried event
# (an older time) does not move a conversation back; the first turn's `about` stays.
_ADD = """
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not last or tonumber(ARGV[2]) > tonumber(last) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3])
local old = redis.call('ZRANGE', KEYS[1], 0, -tonumber(ARGV[4]) - 1)
if #old > 0 then
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return #old
"""


class RedisRecents:
    def __init__(self, redis: Redis, *, prefix: str, ttl: int, keep: int = KEEP) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl
        self._keep = keep
        self._add = redis.register_script(_ADD)  # EVALSHA, loaded again after a restart (NOSCRIPT)

    def _keys(self, tenant: str, user: str) -> tuple[str, str]:
        key = f"{self._prefix}:slack:recent:{tenant}:{user}"
        return key, f"{key}:about"

    async def add(self, turn: Turn) -> None:
        recent = recent_of(turn)
        about = json.dumps({"title": recent.title, "ts": recent.ts, "kind": recent.kind})
        try:
            await self._add(
                keys=self._keys(turn.tenant, turn.user),
                args=[f"{turn.channel}:{turn.thread}", recent.at, about, self._keep, self._ttl],
            )
        except RedisError as exc:
            log.warning("could not record a recent conversation of %s in %s: %s", turn.user, turn.tenant, exc)

    async def recent(self, tenant: str, user: str, count: int) -> list[Recent]:
        ranked, about = self._keys(tenant, user)
        try:
            reply = await self._redis.zrevrange(ranked, 0, count - 1, withscores=True)
            found = cast("list[tuple[bytes | str, float]]", reply)  # (member, score), newest first
            if not found:
                return []
            members = [as_text(member) for member, _ in found]
            details = await self._redis.hmget(about, members)
        except RedisError as exc:
            log.warning("could not read the recent conversations of %s in %s: %s", user, tenant, exc)
            return []
        recents = []
        for member, (_, at), raw in zip(members, found, details, strict=True):
            if raw is None:
                continue  # trimmed between the two reads
            channel, _, thread = member.partition(":")
            fields = json.loads(as_text(raw))
            recents.append(Recent(channel, thread, fields["title"], fields["ts"], fields["kind"], float(at)))
        return recents


class MemoryRecents:
    """In-process twin, bounded in size and time."""

    def __init__(self, *, ttl: int, keep: int = KEEP, max_people: int = 10_000) -> None:
        # (tenant, user) -> (expiry, {(channel, thread): Recent}); people least recently seen first
        self._people: OrderedDict[tuple[str, str], tuple[float, OrderedDict[tuple[str, str], Recent]]] = OrderedDict()
        self._ttl = ttl
        self._keep = keep
        self._max = max_people

    async def add(self, turn: Turn) -> None:
        person = (turn.tenant, turn.user)
        _, theirs = self._people.pop(person, (0.0, OrderedDict()))
        key = (turn.channel, turn.thread)
        first = theirs.pop(key, None)
        new = recent_of(turn)
        if first is not None:
            new = Recent(first.channel, first.thread, first.title, first.ts, first.kind, max(first.at, new.at))
        theirs[key] = new
        while len(theirs) > self._keep:  # the least recently active goes, as in Redis
            del theirs[min(theirs, key=lambda k: theirs[k].at)]
        self._people[person] = (time.monotonic() + self._ttl, theirs)
        while len(self._people) > self._max:
            self._people.popitem(last=False)

    async def recent(self, tenant: str, user: str, count: int) -> list[Recent]:
        until, theirs = self._people.get((tenant, user), (0.0, OrderedDict()))
        if until < time.monotonic():
            self._people.pop((tenant, user), None)
            return []
        return sorted(theirs.values(), key=lambda r: r.at, reverse=True)[:count]
