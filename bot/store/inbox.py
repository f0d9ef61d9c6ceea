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

The Redis inbox is three parts: `RedisInbox` here, the workers' side (put, read, finish,
hand back); `_Order`, the wait for the turn before; and `Upkeep` in `bot.store.inbox_upkeep`,
what runs beside the workers (heartbeat, takeover, depth), with the key layout and the
outage backoff that both sides share.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bot.config import DialogueSettings
from bot.errors import InboxClosed, InboxFull, InboxUnavailable
from bot.reply import NO_JOURNAL, ReplyJournal
from bot.store.inbox_upkeep import GROUP, Outage, StreamKeys, Upkeep
from bot.store.redis import as_text
from bot.turns import Turn

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1000  # below the Redis socket timeout, so a blocked read is never taken for a dead socket


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

    def journal(self, delivery: Delivery) -> ReplyJournal: ...


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

    def journal(self, delivery: Delivery) -> ReplyJournal:
        return NO_JOURNAL

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


class _Order:
    """Turn n of a conversation starts once turn n-1 is finished, whichever replica answers
    it; numbering that started again is recognised (see the module docstring)."""

    def __init__(self, redis: Redis, keys: StreamKeys, outage: Outage, *, timeout: float) -> None:
        self._redis = redis
        self._keys = keys
        self._outage = outage
        self._timeout = timeout
        self._progress = asyncio.Condition()  # notified when this process finishes a turn

    async def wait(self, delivery: Delivery) -> bool:
        """`Inbox.in_order`."""
        turn = delivery.turn
        if turn.seq <= 1 and not delivery.reclaimed:
            return True
        key = self._keys.conv(delivery.stream, turn.key)
        deadline = time.monotonic() + self._timeout
        pause = 0.002
        while True:
            try:
                raw_given, raw_finished, last = await self._redis.hmget(key, "seq", "done", "uid")
            except (RedisError, OSError) as exc:
                await self._outage.seen(exc)
                continue
            if last is not None and as_text(last) == turn.uid:
                return False  # this very turn: finished by a worker that stopped before acknowledging it
            given, finished = int(raw_given or 0), int(raw_finished or 0)
            if finished >= turn.seq - 1:
                if finished >= turn.seq:
                    # Numbering that started again, or a later turn that went on without this one.
                    log.warning(
                        "turn %s of %s: turn %s of the conversation is finished already; answering it now",
                        turn.seq,
                        turn.key,
                        finished,
                    )
                return True
            if given < turn.seq:
                log.warning(
                    "turn %s of %s: the conversation's numbering was lost (last given %s); answering it now",
                    turn.seq,
                    turn.key,
                    given,
                )
                return True
            if time.monotonic() > deadline:
                log.warning(
                    "turn %s of %s waited %.0f s for turn %s; going on without it",
                    turn.seq,
                    turn.key,
                    self._timeout,
                    turn.seq - 1,
                )
                return True
            async with self._progress:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), pause)
            pause = min(pause * 2, 0.1)

    async def advanced(self) -> None:
        """A turn was finished here: the turns waiting for it look again at once."""
        async with self._progress:
            self._progress.notify_all()


class RedisInbox:
    """Redis Streams with one consumer group shared by every worker of every replica. This is
    the workers' side (put, read, finish); `_Order` keeps a conversation's turns in order and
    `Upkeep` runs beside the workers."""

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
        self._ttl = ttl
        self._on_reclaim = on_reclaim
        self.consumer = settings.consumer or default_consumer()
        self._keys = StreamKeys(prefix, settings.stream_shards, platforms)
        self._ready: deque[Delivery] = deque()  # read, not yet handed to a worker
        # Read and not finished: what the heartbeat keeps. Entry ids are unique per stream only.
        self._held: dict[tuple[str, str], Delivery] = {}
        self._closed = False
        self._outage = Outage()
        self._order = _Order(redis, self._keys, self._outage, timeout=order_timeout)
        self._upkeep = Upkeep(
            redis,
            self._keys,
            self._outage,
            consumer=self.consumer,
            visibility_ms=self._visibility_ms,
            held=self._held,
            take_over=self._taken_over,
        )
        self._put = redis.register_script(_PUT)
        self._finish = redis.register_script(_FINISH)

    def __len__(self) -> int:
        """Turns in the streams (waiting or being answered), as of the last look."""
        return self._upkeep.depth

    @property
    def pending(self) -> int:
        """Turns this worker has taken and not finished."""
        return len(self._held)

    # -- intake ----------------------------------------------------------------------------

    async def put(self, turn: Turn) -> None:
        if self._closed:
            raise InboxClosed("the inbox is closed for shutdown")
        stream = self._keys.of(turn.key)
        try:
            added = await self._put(
                keys=[stream, self._keys.conv(stream, turn.key)],
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
        if not self._keys.read:  # a replica with no platform of its own only puts turns
            await asyncio.sleep(READ_BLOCK_MS / 1000)
            return
        try:
            reply = await self._redis.xreadgroup(
                GROUP, self.consumer, {stream: ">" for stream in self._keys.read}, count=1, block=READ_BLOCK_MS
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                await self._upkeep.create_groups()  # a Redis that lost its data (restarted without persistence)
            else:
                await self._outage.seen(exc)  # e.g. READONLY from a replica during a failover
            return
        except (RedisError, OSError) as exc:
            await self._outage.seen(exc)
            return
        self._outage.over()
        # XREADGROUP's reply: [(stream, [(entry id, fields), ...]), ...]
        streams = cast("list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]", reply or [])
        for stream, entries in streams:
            for entry, fields in entries:
                self._accept(as_text(stream), as_text(entry), fields)

    def _taken_over(self, stream: str, entry: str, fields: dict[bytes, bytes], posted: Sequence[str]) -> None:
        self._on_reclaim()
        self._accept(stream, entry, fields, reclaimed=True, posted=posted)

    def _accept(
        self,
        stream: str,
        entry: str,
        fields: dict[bytes, bytes],
        *,
        reclaimed: bool = False,
        posted: Sequence[str] = (),
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
        return await self._order.wait(delivery)

    async def done(self, delivery: Delivery) -> None:
        stream, turn = delivery.stream, delivery.turn
        keys = [stream, self._keys.conv(stream, turn.key), self._keys.reply(stream, delivery.entry)]
        args: list[str | int] = [GROUP, delivery.entry, turn.seq, self._ttl, self.consumer, turn.uid]
        deadline = time.monotonic() + self._visibility_ms / 1000
        while True:
            try:
                if not await self._finish(keys=keys, args=args):
                    log.warning(
                        "turn %s/%s was taken over by another worker; not finishing it here", stream, delivery.entry
                    )
                break
            except (RedisError, OSError) as exc:
                if time.monotonic() > deadline:
                    # It stays pending: whoever takes it over sees from the context that it was answered.
                    log.error("could not finish turn %s/%s: %s", stream, delivery.entry, exc)
                    break
                await self._outage.seen(exc)
        self._held.pop((stream, delivery.entry), None)
        await self._order.advanced()

    def journal(self, delivery: Delivery) -> ReplyJournal:
        return _Journal(self._redis, self._keys.reply(delivery.stream, delivery.entry), delivery.posted, self._ttl)

    async def maintain(self) -> None:
        """Runs beside the workers until cancelled: keeps this worker's entries fresh, takes over
        entries whose worker went quiet, and measures the streams' length (`Upkeep`)."""
        await self._upkeep.run()

    # -- shutdown --------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop handing out turns; those read but not started go back to the group at once."""
        self._closed = True
        self._upkeep.stop_taking_over()
        unstarted = list(self._ready)
        self._ready.clear()
        await self._hand_over(unstarted)

    async def release(self) -> None:
        """Hand every turn still held back to the group (shutdown past its drain deadline)."""
        await self._hand_over(list(self._held.values()))

    async def _hand_over(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._held.pop((delivery.stream, delivery.entry), None)
        await self._upkeep.hand_over([(delivery.stream, delivery.entry) for delivery in deliveries])


def with_uid(turn: Turn) -> Turn:
    """The turn with an id of its own: a platform retry put in again gets another."""
    return dataclasses.replace(turn, uid=uuid.uuid4().hex)
