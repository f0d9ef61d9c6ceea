"""The inbox between adapters and dialogue workers.

An adapter puts a turn in and only then acknowledges the platform; workers take turns
out. Two implementations of one protocol:

- `MemoryInbox`, an in-process queue: the bot as one process with no Redis configured.
- `RedisInbox`, Redis Streams read through one consumer group (`workers`): a turn that
  was put in survives the process that took it, and every replica's workers share the
  work. A worker that dies mid-turn leaves its entry pending; after `visibility_timeout`
  without the worker's heartbeat another worker claims it (XAUTOCLAIM) and finishes it.

The bound is the back-pressure: when the inbox is full, `put` fails at once with
`InboxFull` and the adapter tells the user to try again, instead of a queue growing
without end. When Redis cannot be reached `put` raises `InboxUnavailable`, and the
adapter keeps the turn in the platform's hands (Slack redelivers, Discord buffers).

Redis layout (P = key prefix; `s` = the conversation's shard, crc32 of its key modulo
`stream_shards`; the `{platform:s}` hash tag keeps one stream's keys in one Cluster slot):

    P:inbox:{platform:s}                 stream of entries {turn: JSON, seq: n}
    P:inbox:{platform:s}:conv:<conv>     hash: `seq` the last sequence number given in the
                                         conversation, `done` the highest finished, `uid` the
                                         id of the turn that finished last
    P:inbox:{platform:s}:reply:<entry>   the platform ids of the messages an answer has posted

Streams are per platform because a turn is answered through its platform's adapter: a
replica reads only the streams of the platforms it runs (Discord shards on some replicas,
Slack and web chat on others), and any replica may put a turn for any platform (a Slack
agent's reply to a web visitor).

Order within a conversation across replicas: `put` gives each turn the next sequence
number of its conversation in the same script that adds the entry, and a worker starts
turn n only once n-1 is finished (`in_order`). The numbers only order turns; they never
decide that a turn was answered. The counters of a conversation live in one hash with one
lifetime, so they expire together, and numbering that started again (the hash expired, the
shards were re-cut, a failover lost writes) is recognised: a turn whose number is above the
last one given, or below the last one finished, goes on at once instead of waiting or being
taken for finished. Whether a turn was answered is decided by its id (`Turn.uid`, given here)
in the saved context and the dedupe claim. Fencing: a worker's heartbeat and its
`done` act only on entries the group still assigns to it, so a worker that stalled past
the visibility timeout cannot finish (or keep) a turn another worker took over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bot.config import DialogueSettings
from bot.errors import InboxClosed, InboxFull, InboxUnavailable
from bot.reply import ReplyJournal
from bot.turns import ConversationKey, Turn

log = logging.getLogger(__name__)

GROUP = "workers"
READ_BLOCK_MS = 1000  # below the Redis socket timeout, so a blocked read is never taken for a dead socket
MAX_ATTEMPTS = 5  # deliveries of one entry before it is given up as one that kills its workers


@dataclass(frozen=True, slots=True)
class Delivery:
    """A turn as a worker received it, with what the inbox needs to finish it."""

    turn: Turn
    entry: str = ""  # the stream entry id ("" in memory)
    stream: str = ""
    reclaimed: bool = False  # taken over from a worker that stopped
    posted: tuple[str, ...] = field(default=())  # messages that worker had posted for the answer


class Intake(Protocol):
    """What an adapter sees of the inbox."""

    async def put(self, turn: Turn) -> None:
        """Take a turn, or raise `InboxFull` / `InboxUnavailable` / `InboxClosed` at once."""
        ...


class Inbox(Intake, Protocol):
    """What the dialogue workers see of it."""

    async def get(self) -> Delivery:
        """The next turn, waiting for one; `InboxClosed` once closed."""
        ...

    async def in_order(self, delivery: Delivery) -> bool:
        """Wait until the earlier turns of the conversation are finished. False when this turn
        itself was finished already (a worker died between finishing and acknowledging)."""
        ...

    async def done(self, delivery: Delivery) -> None:
        """The turn is finished: never hand it out again."""
        ...

    def journal(self, delivery: Delivery) -> ReplyJournal | None: ...


class MemoryInbox:
    """A bounded in-process queue. Turns of one conversation are kept in order by the
    dialogue manager's per-conversation locks; nothing here outlives the process."""

    def __init__(self, maxsize: int) -> None:
        self._turns: deque[Turn] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._turns)

    pending = 0  # nothing is held between `get` and `done`

    async def put(self, turn: Turn) -> None:
        if self._closed:
            raise InboxClosed("the inbox is closed for shutdown")
        if len(self._turns) >= self._maxsize:
            raise InboxFull(f"{len(self._turns)} turns waiting")
        async with self._ready:
            self._turns.append(with_uid(turn))
            self._ready.notify()

    async def get(self) -> Delivery:
        async with self._ready:
            await self._ready.wait_for(lambda: self._turns or self._closed)
            if not self._turns:
                raise InboxClosed("the inbox is closed")
            return Delivery(self._turns.popleft())

    async def in_order(self, delivery: Delivery) -> bool:
        return True

    async def done(self, delivery: Delivery) -> None:
        pass

    def journal(self, delivery: Delivery) -> ReplyJournal | None:
        return None

    async def maintain(self) -> None:
        """Nothing to look after in process memory."""

    async def close(self) -> None:
        """Stop taking turns; those already in are still handed out."""
        async with self._ready:
            self._closed = True
            self._ready.notify_all()

    async def release(self) -> None:
        """Nothing to hand over: what is in memory ends with the process."""


# KEYS: stream, conversation hash. ARGV: max length, ttl, turn JSON. The length check, the
# number and the entry are one atomic step: no number is ever given to a turn that was refused.
_PUT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {redis.call('XADD', KEYS[1], '*', 'turn', ARGV[3], 'seq', seq), seq}
"""

# KEYS: stream, conversation hash, reply key. ARGV: group, entry id, seq, ttl, consumer, uid.
# Only the consumer the group assigns the entry to may finish it (the fence). `done` only
# rises, unless it is above the last number given: then it is from before the numbering
# started again, and this turn's number replaces it.
_FINISH = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[5] then return 0 end
local seq = tonumber(ARGV[3])
local counters = redis.call('HMGET', KEYS[2], 'seq', 'done')
local given, done = tonumber(counters[1] or '0'), tonumber(counters[2] or '0')
if seq > done or done > given then redis.call('HSET', KEYS[2], 'done', seq) end
redis.call('HSET', KEYS[2], 'uid', ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS: stream. ARGV: group, consumer, idle ms to set, entry ids... Refreshes (idle 0) or hands
# over (idle = the visibility timeout) the entries still assigned to this consumer; returns the
# ids it no longer has.
_TOUCH = """
local lost = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class _Journal:
    """`ReplyJournal` in Redis next to the entry; it goes when the entry is finished."""

    def __init__(self, redis: Redis, key: str, ids: Sequence[str], ttl: int) -> None:
        self._redis = redis
        self._key = key
        self._ttl = ttl
        self.ids: Sequence[str] = tuple(ids)

    async def record(self, ids: Sequence[str]) -> None:
        self.ids = tuple(ids)
        try:
            await self._redis.set(self._key, json.dumps(self.ids), ex=self._ttl)
        except RedisError as exc:
            # The answer goes on; only a takeover after this point would post a second message.
            log.warning("could not record the answer's message ids: %s", exc)


class RedisInbox:
    """Redis Streams with one consumer group shared by every worker of every replica."""

    def __init__(
        self,
        redis: Redis,
        settings: DialogueSettings,
        *,
        prefix: str,
        ttl: int,
        order_timeout: float,
        platforms: Sequence[str],
        on_reclaim: Callable[[], None] = lambda: None,
    ) -> None:
        self._redis = redis
        self._maxlen = settings.inbox_size
        self._visibility_ms = int(settings.visibility_timeout * 1000)
        self._order_timeout = order_timeout
        self._ttl = ttl
        self._on_reclaim = on_reclaim
        self.consumer = settings.consumer or default_consumer()
        self._prefix = prefix
        self._shards = settings.stream_shards
        # The streams this worker reads: its platforms' shards.
        self._streams = [self._stream(p, s) for p in sorted(set(platforms)) for s in range(self._shards)]
        self._ready: deque[Delivery] = deque()  # read, not yet handed to a worker
        # Read and not finished: what the heartbeat keeps. Entry ids are unique per stream only.
        self._held: dict[tuple[str, str], Delivery] = {}
        self._progress = asyncio.Condition()  # notified when this process finishes a turn
        self._closed = False
        self._depth = 0
        self._down_since: float | None = None
        self._last_complaint = 0.0
        self._put = redis.register_script(_PUT)
        self._finish = redis.register_script(_FINISH)
        self._touch = redis.register_script(_TOUCH)

    def __len__(self) -> int:
        """Turns in the streams (waiting or being answered), as of the last look."""
        return self._depth

    @property
    def pending(self) -> int:
        """Turns this worker has taken and not finished."""
        return len(self._held)

    # -- keys ----------------------------------------------------------------------------

    def _stream(self, platform: str, shard: int) -> str:
        return f"{self._prefix}:inbox:{{{platform}:{shard}}}"

    def _stream_of(self, key: ConversationKey) -> str:
        return self._stream(key.platform, zlib.crc32(str(key).encode("utf-8", "surrogatepass")) % self._shards)

    @staticmethod
    def _key(stream: str, kind: str, name: str) -> str:
        return f"{stream}:{kind}:{name}"

    # -- intake ----------------------------------------------------------------------------

    async def put(self, turn: Turn) -> None:
        if self._closed:
            raise InboxClosed("the inbox is closed for shutdown")
        stream = self._stream_of(turn.key)
        try:
            added = await self._put(
                keys=[stream, self._key(stream, "conv", str(turn.key))],
                args=[self._maxlen, self._ttl, json.dumps(with_uid(turn).to_dict())],
            )
        except (RedisError, OSError) as exc:
            raise InboxUnavailable(f"the inbox cannot take the turn: {type(exc).__name__}") from exc
        if added is None:
            raise InboxFull(f"{self._maxlen} turns waiting in {stream}")

    # -- workers ---------------------------------------------------------------------------

    async def get(self) -> Delivery:
        while not self._ready:
            if self._closed:
                raise InboxClosed("the inbox is closed")
            await self._read()
        return self._ready.popleft()

    async def _read(self) -> None:
        if not self._streams:  # a replica with no platform of its own only puts turns
            await asyncio.sleep(READ_BLOCK_MS / 1000)
            return
        try:
            reply = await self._redis.xreadgroup(
                GROUP, self.consumer, {stream: ">" for stream in self._streams}, count=1, block=READ_BLOCK_MS
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                await self._create_groups()  # a Redis that lost its data (restarted without persistence)
            else:
                await self._outage(exc)  # e.g. READONLY from a replica during a failover
            return
        except (RedisError, OSError) as exc:
            await self._outage(exc)
            return
        self._recovered()
        for stream, entries in reply or ():
            for entry, fields in entries:
                self._accept(text(stream), text(entry), fields)

    def _accept(
        self, stream: str, entry: str, fields: dict[bytes, bytes], *, reclaimed: bool = False, posted: Sequence[str] = ()
    ) -> None:
        try:
            turn = Turn.from_dict({**json.loads(fields[b"turn"]), "seq": int(fields[b"seq"])})
        except (KeyError, ValueError, TypeError) as exc:
            # Only a bug or a version skew writes such an entry; it is kept in the stream for a look.
            log.error("inbox entry %s/%s is unreadable (%r); left pending", stream, entry, exc)
            return
        delivery = Delivery(turn, entry, stream, reclaimed=reclaimed, posted=tuple(posted))
        self._held[stream, entry] = delivery
        self._ready.append(delivery)

    async def in_order(self, delivery: Delivery) -> bool:
        turn = delivery.turn
        if turn.seq <= 1 and not delivery.reclaimed:
            return True
        key = self._key(delivery.stream, "conv", str(turn.key))
        deadline = time.monotonic() + self._order_timeout
        pause = 0.002
        while True:
            try:
                given, finished, last = await self._redis.hmget(key, "seq", "done", "uid")
            except (RedisError, OSError) as exc:
                await self._outage(exc)
                continue
            if last is not None and text(last) == turn.uid:
                return False  # this very turn: finished by a worker that stopped before acknowledging it
            given, finished = int(given or 0), int(finished or 0)
            if finished >= turn.seq - 1:
                if finished >= turn.seq:
                    # Numbering that started again, or a later turn that went on without this one.
                    log.warning("turn %s of %s: turn %s of the conversation is finished already; answering it now",
                                turn.seq, turn.key, finished)
                return True
            if given < turn.seq:
                log.warning("turn %s of %s: the conversation's numbering was lost (last given %s); answering it now",
                            turn.seq, turn.key, given)
                return True
            if time.monotonic() > deadline:
                log.warning(
                    "turn %s of %s waited %.0f s for turn %s; going on without it",
                    turn.seq, turn.key, self._order_timeout, turn.seq - 1,
                )
                return True
            async with self._progress:
                try:
                    await asyncio.wait_for(self._progress.wait(), pause)
                except TimeoutError:
                    pass
            pause = min(pause * 2, 0.1)

    async def done(self, delivery: Delivery) -> None:
        stream, turn = delivery.stream, delivery.turn
        keys = [stream, self._key(stream, "conv", str(turn.key)), self._key(stream, "reply", delivery.entry)]
        args = [GROUP, delivery.entry, turn.seq, self._ttl, self.consumer, turn.uid]
        deadline = time.monotonic() + self._visibility_ms / 1000
        while True:
            try:
                if not await self._finish(keys=keys, args=args):
                    log.warning("turn %s/%s was taken over by another worker; not finishing it here", stream, delivery.entry)
                break
            except (RedisError, OSError) as exc:
                if time.monotonic() > deadline:
                    # It stays pending: whoever takes it over sees from the context that it was answered.
                    log.error("could not finish turn %s/%s: %s", stream, delivery.entry, exc)
                    break
                await self._outage(exc)
        self._held.pop((stream, delivery.entry), None)
        async with self._progress:
            self._progress.notify_all()

    def journal(self, delivery: Delivery) -> ReplyJournal:
        return _Journal(self._redis, self._key(delivery.stream, "reply", delivery.entry), delivery.posted, self._ttl)

    # -- upkeep: heartbeat, takeover, depth ----------------------------------------------------------

    async def maintain(self) -> None:
        """Runs beside the workers until cancelled: keeps this worker's entries fresh, takes over
        entries whose worker went quiet, and measures the streams' length. The heartbeat has a
        loop of its own, so that slow takeovers never delay it."""
        await self._create_groups()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._every(self._visibility_ms / 4000, self._heartbeat))
            tg.create_task(self._every(self._visibility_ms / 2000, self._look_around))

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
                self._recovered()
            except (RedisError, OSError) as exc:
                await self._outage(exc, pause=False)
            await asyncio.sleep(min(max(seconds, 0.05), 5.0))

    async def _heartbeat(self) -> None:
        await self._touch_held(list(self._held.values()), idle_ms=0)

    async def _look_around(self) -> None:
        if not self._closed:
            await self._reclaim()
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self._streams:
                pipe.xlen(stream)
            self._depth = sum(await pipe.execute())

    async def _create_groups(self) -> None:
        for stream in self._streams:
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # BUSYGROUP: it exists already, as it should
                    await self._outage(exc)
                    return
            except (RedisError, OSError) as exc:
                await self._outage(exc)
                return

    async def _touch_held(self, deliveries: Sequence[Delivery], *, idle_ms: int) -> None:
        """One round trip for all shards: refresh (idle 0) or hand over (idle = the visibility
        timeout) the given entries, where the group still assigns them to this worker."""
        by_stream: dict[str, list[str]] = {}
        for delivery in deliveries:
            by_stream.setdefault(delivery.stream, []).append(delivery.entry)
        if not by_stream:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, entries in by_stream.items():
                await self._touch(keys=[stream], args=[GROUP, self.consumer, idle_ms, *entries], client=pipe)
            for stream, lost in zip(by_stream, await pipe.execute()):
                for entry in map(text, lost):
                    # Held past the visibility timeout without a heartbeat (a stalled process).
                    log.warning("turn %s/%s was taken over by another worker", stream, entry)

    async def _reclaim(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self._streams:
                pipe.xautoclaim(stream, GROUP, self.consumer, min_idle_time=self._visibility_ms, start_id="0-0", count=16)
            found = await pipe.execute()
        for stream, result in zip(self._streams, found):
            claimed, gone = result[1], result[2] if len(result) > 2 else []  # Redis 6.2 has no third part
            if gone:  # deleted while pending: nothing left to answer
                await self._redis.xack(stream, GROUP, *gone)
            if not claimed:
                continue
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry, _ in claimed:
                    pipe.xpending_range(stream, GROUP, min=entry, max=entry, count=1)
                    pipe.get(self._key(stream, "reply", text(entry)))
                looked = await pipe.execute()
            for (entry, fields), pending, posted in zip(claimed, looked[::2], looked[1::2]):
                entry = text(entry)
                if (stream, entry) in self._held:
                    # Its own turn, not refreshed in time (this process was starved of CPU): it is
                    # still being answered here, so it is not handed out a second time.
                    log.warning("turn %s/%s went %s ms without a heartbeat", stream, entry, self._visibility_ms)
                    continue
                attempts = pending[0]["times_delivered"] if pending else 1
                if attempts > MAX_ATTEMPTS:
                    log.error("turn %s/%s was taken %s times without finishing; given up", stream, entry, attempts)
                    await self._redis.xack(stream, GROUP, entry)
                    await self._redis.xdel(stream, entry)
                    continue
                log.warning("taking over turn %s/%s from a worker that stopped (delivery %s)", stream, entry, attempts)
                self._on_reclaim()
                self._accept(stream, entry, fields, reclaimed=True, posted=json.loads(posted) if posted else ())

    async def _outage(self, exc: BaseException, *, pause: bool = True) -> None:
        """Redis is unreachable: say so once (and every 30 s while it lasts), then back off."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if now - self._last_complaint > 30:
            log.warning("the inbox cannot reach Redis (%s: %s); turns wait until it is back", type(exc).__name__, exc)
            self._last_complaint = now
        if pause:
            await asyncio.sleep(min(0.1 * 2 ** min((now - self._down_since) / 2, 6), 5.0))

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.info("the inbox reached Redis again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
            self._last_complaint = 0.0

    # -- shutdown --------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop handing out turns; those read but not started go back to the group at once."""
        self._closed = True
        unstarted = list(self._ready)
        self._ready.clear()
        await self._hand_over(unstarted)

    async def release(self) -> None:
        """Hand every turn still held back to the group (shutdown past its drain deadline)."""
        await self._hand_over(list(self._held.values()))

    async def _hand_over(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        for delivery in deliveries:
            self._held.pop((delivery.stream, delivery.entry), None)
        try:
            # Marked idle for the whole visibility timeout: the next worker to look takes them over.
            await self._touch_held(deliveries, idle_ms=self._visibility_ms)
        except (RedisError, OSError) as exc:
            log.warning("could not hand %s turns back (%s); others take them after the visibility timeout", len(deliveries), exc)
        else:
            log.info("handed %s unfinished turns back to the other workers", len(deliveries))


def with_uid(turn: Turn) -> Turn:
    """The turn with an id of its own: a platform retry put in again gets another."""
    return dataclasses.replace(turn, uid=uuid.uuid4().hex)


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients made with or without `decode_responses`)."""
    return value.decode() if isinstance(value, bytes) else value
