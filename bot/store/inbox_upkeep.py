"""What keeps the Redis inbox's streams in order beside its workers (`bot.store.inbox` has the
workers' side and the key layout): the heartbeat of the turns a worker holds, the takeover of
turns whose worker stopped, and the backoff while Redis cannot be reached.

The upkeep knows held turns only by (stream, entry id): the inbox keeps the deliveries
themselves, and hands a taken-over entry to its readers through `take_over`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bot.store.redis import as_text
from bot.turns import ConversationKey

log = logging.getLogger(__name__)

GROUP = "workers"
MAX_ATTEMPTS = 5  # deliveries of one entry before it is given up as one that kills its workers

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

# A taken-over entry for the inbox's readers: stream, entry id, its fields, the messages the
# stopped worker had posted for the answer.
TakeOver = Callable[[str, str, dict[bytes, bytes], Sequence[str]], None]


class StreamKeys:
    """The inbox's keys (the layout in `bot.store.inbox`'s docstring) and the streams one
    worker reads: its platforms' shards."""

    def __init__(self, prefix: str, shards: int, platforms: Sequence[str]) -> None:
        self._prefix = prefix
        self._shards = shards
        self.read = [self.stream(p, s) for p in sorted(set(platforms)) for s in range(shards)]

    def stream(self, platform: str, shard: int) -> str:
        return f"{self._prefix}:inbox:{{{platform}:{shard}}}"

    def of(self, key: ConversationKey) -> str:
        """The stream of a conversation's turns."""
        return self.stream(key.platform, zlib.crc32(str(key).encode("utf-8", "surrogatepass")) % self._shards)

    @staticmethod
    def conv(stream: str, key: ConversationKey) -> str:
        return f"{stream}:conv:{key}"

    @staticmethod
    def reply(stream: str, entry: str) -> str:
        return f"{stream}:reply:{entry}"


class Outage:
    """Redis is unreachable: said once (and every 30 s while it lasts), with a growing pause,
    and said again when it is over. One per inbox, shared by its readers and its upkeep."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._last_complaint = 0.0

    async def seen(self, exc: BaseException, *, pause: bool = True) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if now - self._last_complaint > 30:
            log.warning("the inbox cannot reach Redis (%s: %s); turns wait until it is back", type(exc).__name__, exc)
            self._last_complaint = now
        if pause:
            await asyncio.sleep(min(0.1 * 2 ** min((now - self._since) / 2, 6), 5.0))

    def over(self) -> None:
        if self._since is not None:
            log.info("the inbox reached Redis again after %.1f s", time.monotonic() - self._since)
            self._since = None
            self._last_complaint = 0.0


class Upkeep:
    """One worker's upkeep: keeps the entries it holds fresh, takes over entries whose worker
    went quiet, and measures the streams' length (`depth`)."""

    def __init__(
        self,
        redis: Redis,
        keys: StreamKeys,
        outage: Outage,
        *,
        consumer: str,
        visibility_ms: int,
        held: Collection[tuple[str, str]],
        take_over: TakeOver,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._outage = outage
        self._consumer = consumer
        self._visibility_ms = visibility_ms
        self._held = held  # the inbox's own record of what it read and has not finished
        self._take_over = take_over
        self._taking_over = True
        self._touch = redis.register_script(_TOUCH)
        self.depth = 0  # turns in the streams (waiting or being answered), as of the last look

    async def run(self) -> None:
        """Until cancelled. The heartbeat has a loop of its own, so that slow takeovers never delay it."""
        await self.create_groups()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._every(self._visibility_ms / 4000, self._heartbeat))
            tg.create_task(self._every(self._visibility_ms / 2000, self._look_around))

    def stop_taking_over(self) -> None:
        """The worker is leaving: the turns of stopped workers are left to the others."""
        self._taking_over = False

    async def create_groups(self) -> None:
        for stream in self._keys.read:
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # BUSYGROUP: it exists already, as it should
                    await self._outage.seen(exc)
                    return
            except (RedisError, OSError) as exc:
                await self._outage.seen(exc)
                return

    async def hand_over(self, entries: Sequence[tuple[str, str]]) -> None:
        """Give entries the inbox no longer holds back to the group at once."""
        if not entries:
            return
        try:
            # Marked idle for the whole visibility timeout: the next worker to look takes them over.
            await self._touch_entries(entries, idle_ms=self._visibility_ms)
        except (RedisError, OSError) as exc:
            log.warning(
                "could not hand %s turns back (%s); others take them after the visibility timeout", len(entries), exc
            )
        else:
            log.info("handed %s unfinished turns back to the other workers", len(entries))

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
                self._outage.over()
            except (RedisError, OSError) as exc:
                await self._outage.seen(exc, pause=False)
            await asyncio.sleep(min(max(seconds, 0.05), 5.0))

    async def _heartbeat(self) -> None:
        await self._touch_entries(list(self._held), idle_ms=0)

    async def _look_around(self) -> None:
        if self._taking_over:
            await self._reclaim()
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self._keys.read:
                pipe.xlen(stream)
            self.depth = sum(await pipe.execute())

    async def _touch_entries(self, entries: Iterable[tuple[str, str]], *, idle_ms: int) -> None:
        """One round trip for all shards: refresh (idle 0) or hand over (idle = the visibility
        timeout) the given entries, where the group still assigns them to this worker."""
        by_stream: dict[str, list[str]] = {}
        for stream, entry in entries:
            by_stream.setdefault(stream, []).append(entry)
        if not by_stream:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                await self._touch(keys=[stream], args=[GROUP, self._consumer, idle_ms, *ids], client=pipe)
            for stream, lost in zip(by_stream, await pipe.execute(), strict=True):
                for entry in map(as_text, lost):
                    # Held past the visibility timeout without a heartbeat (a stalled process).
                    log.warning("turn %s/%s was taken over by another worker", stream, entry)

    async def _reclaim(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self._keys.read:
                pipe.xautoclaim(
                    stream, GROUP, self._consumer, min_idle_time=self._visibility_ms, start_id="0-0", count=16
                )
            found = await pipe.execute()
        for stream, result in zip(self._keys.read, found, strict=True):
            claimed, gone = result[1], result[2] if len(result) > 2 else []  # Redis 6.2 has no third part
            if gone:  # deleted while pending: nothing left to answer
                await self._redis.xack(stream, GROUP, *gone)
            if not claimed:
                continue
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry, _ in claimed:
                    pipe.xpending_range(stream, GROUP, min=entry, max=entry, count=1)
                    pipe.get(self._keys.reply(stream, as_text(entry)))
                looked = await pipe.execute()
            for (entry, fields), pending, posted in zip(claimed, looked[::2], looked[1::2], strict=True):
                entry = as_text(entry)
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
                self._take_over(stream, entry, fields, json.loads(posted) if posted else ())
