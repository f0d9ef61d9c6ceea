"""Getting a frame to every open socket (every tab) of one visitor.

`Connection` is one socket with its own bounded outbox, written by its own pump task,
so a slow or stuck tab never holds up an answer, the engine's stream or another tab:
a tab that falls `OUTBOX_FRAMES` behind is closed and reconnects (it then reloads
the history, which is complete).

`LocalFanout` is the registry of this process's sockets. It is enough while the worker
that answers a visitor runs in the process that holds the visitor's socket: one process,
no Redis.

`RedisFanout` is for replicas (used whenever Redis is configured). With the Redis inbox
any replica's worker may answer a turn, and the visitor's tabs may be held by others
(or by several: two tabs, two replicas). Every frame is published to the visitor's
channel `{prefix}:web:{site}:visitor:<id>`; each replica subscribes to the channels of
the visitors whose sockets it holds (SUBSCRIBE when a visitor's first socket arrives,
UNSUBSCRIBE soon after its last leaves) and pushes what arrives into those sockets. The
publisher delivers to its own sockets from its subscription too, never directly: a tab
gets each frame once, wherever it is held and whoever answers. The price is one Redis
hop for every frame, the local ones included (a fraction of a millisecond on a LAN;
see tests/web/test_fanout.py, which measures it).

Order: one answer is published by one sink, which awaits each frame before the next,
and Redis delivers to a subscriber in the order it executed the PUBLISHes, so an
answer's frames arrive in order. Pub/sub keeps nothing: a frame published while a
replica is not subscribed (Redis restarting, the replica reconnecting) is lost to its
tabs; `done` carries the whole answer, and the saved context has it on reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bot.store.redis import as_text, cancel_and_wait

log = logging.getLogger(__name__)

OUTBOX_FRAMES = 256  # frames queued for one socket before it counts as stuck
SEND_TIMEOUT = 10.0  # seconds one frame may take to leave (a full TCP window, a dead peer)
_CLOSE = None  # the pump's signal to close the socket


class Connection:
    """One open socket of one visitor."""

    def __init__(self, ws: web.WebSocketResponse, visitor: str, *, limit: int = OUTBOX_FRAMES) -> None:
        self.ws = ws
        self.visitor = visitor
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._limit = limit
        # Frames published before the welcome is sent wait here, so the welcome goes first.
        self._held: list[str] | None = []
        self.overflowed = False

    def push(self, frame: str) -> bool:
        """Queue a frame; False if the socket is closing or fell too far behind."""
        if self.overflowed or self.ws.closed:
            return False
        if self._held is not None:
            self._held.append(frame)
            pending = len(self._held)
        else:
            self._outbox.put_nowait(frame)
            pending = self._outbox.qsize()
        if pending > self._limit:
            self._overflow()
            return False
        return True

    def open(self, first: str) -> None:
        """Send `first` (the welcome), then whatever was published meanwhile."""
        held, self._held = self._held or [], None
        for frame in (first, *held):
            if not self.push(frame):
                return

    def _overflow(self) -> None:
        self.overflowed = True
        self._held = None
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._outbox.put_nowait(_CLOSE)

    async def pump(self) -> None:
        """Write queued frames until cancelled or the socket fails; never raises otherwise."""
        while True:
            frame = await self._outbox.get()
            if frame is _CLOSE:
                log.warning("web: a tab of visitor %s fell %d frames behind; closing it", self.visitor, self._limit)
                await self.ws.close(code=aiohttp.WSCloseCode.TRY_AGAIN_LATER, message=b"too slow")
                return
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self.ws.send_str(frame)
            except (ConnectionError, aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                # The socket is gone or stuck: its receive loop ends when it closes, and the
                # visitor's other tabs and the saved context still have the answer.
                log.info("web: a tab of visitor %s stopped taking frames: %r", self.visitor, exc)
                await self.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
                return


class Fanout(Protocol):
    async def attach(self, conn: Connection) -> None:
        """Hold `conn`; returns once frames published for its visitor reach it (or, if Redis
        cannot say so in time, once they will when it is back)."""
        ...

    def detach(self, conn: Connection) -> None: ...

    def count(self, visitor: str) -> int:
        """Sockets of `visitor` held by this process."""
        ...

    def connections(self) -> Iterator[Connection]:
        """Every socket held by this process (to close them at shutdown)."""
        ...

    async def publish(self, visitor: str, frame: str) -> int:
        """Deliver `frame` to every socket of `visitor`. Never raises for a failed delivery:
        returns how many took it (sockets here, or replicas holding some), 0 for none."""
        ...

    async def run(self) -> None:
        """What keeps delivery going (a subscription), until cancelled."""
        ...


class LocalFanout:
    """Every socket this process holds, by visitor. See the module docstring for replicas."""

    def __init__(self) -> None:
        self._by_visitor: dict[str, set[Connection]] = {}

    async def attach(self, conn: Connection) -> None:
        self._by_visitor.setdefault(conn.visitor, set()).add(conn)

    def detach(self, conn: Connection) -> None:
        conns = self._by_visitor.get(conn.visitor)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_visitor[conn.visitor]

    def count(self, visitor: str) -> int:
        return len(self._by_visitor.get(visitor, ()))

    def visitors(self) -> Iterator[str]:
        """The visitors with at least one socket here."""
        return iter(list(self._by_visitor))

    def connections(self) -> Iterator[Connection]:
        for conns in list(self._by_visitor.values()):
            yield from list(conns)

    def deliver(self, visitor: str, frame: str) -> int:
        return sum(conn.push(frame) for conn in list(self._by_visitor.get(visitor, ())))

    async def publish(self, visitor: str, frame: str) -> int:
        return self.deliver(visitor, frame)

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to keep going in one process


SUBSCRIBE_TIMEOUT = 5.0  # seconds a new socket waits for its visitor's subscription before going on without
POLL = 1.0  # seconds between looks for channels to drop (a visitor whose last tab here left)
PUBLISH_PAUSE = 2.0  # seconds publishing rests after a failure, so an answer is not slowed by one per frame
RECONNECT_MAX = 5.0  # seconds, the longest pause between attempts to subscribe again


class RedisFanout:
    """This process's sockets (a `LocalFanout`), reached through Redis pub/sub: frames from any
    replica's workers reach them, and frames from here reach the visitor's tabs on other replicas.

    One PubSub connection, owned by `run()` (started by the adapter, cancelled at its close):
    it reads every frame and pong, and makes the connection again, with every subscription,
    when Redis goes away. `attach` subscribes at once and waits until Redis has done it (a PING
    answered after the SUBSCRIBE), so the welcome never goes out before the tab can hear its
    answers; `detach` only marks the channel, which `run()` drops within `POLL` seconds (a
    channel kept a little longer costs a frame sent to no one). Publishing uses the shared
    client's pool, so it never waits behind the subscription's reads.
    """

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:visitor:"  # prefix: `{redis prefix}:web:{site}`
        # Subscribed to from connecting on, though nothing is published there: a connection with no
        # subscription gets a health check from redis-py before a SUBSCRIBE, a PING whose answer
        # that SUBSCRIBE's task would read, racing run()'s reads. Subscribed, it never does.
        self._home = f"{prefix}:fanout"
        self._local = LocalFanout()
        self._pubsub: PubSub | None = None  # while connected
        self._connected = asyncio.Event()  # set while `_pubsub` is
        self._subscribed: set[str] = set()  # channels asked for on that connection
        self._lock = asyncio.Lock()  # one round of (UN)SUBSCRIBE at a time, so `_subscribed` stays true
        self._pings: dict[str, asyncio.Future[bool]] = {}  # PING payload -> who waits for its answer
        self._ping_ids = itertools.count(1)
        self._stale = False  # a visitor's last socket here left: drop its channel at the next look
        self._down_since: float | None = None  # the subscription's outage, if any
        self._paused_until = 0.0  # no publishing before this (time.monotonic) after a failure
        self._publish_failing = False

    def channel(self, visitor: str) -> str:
        return self._prefix + visitor

    # -- the sockets here -------------------------------------------------------------------

    async def attach(self, conn: Connection) -> None:
        await self._local.attach(conn)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                if self._down_since is None:  # starting: the first connection is on its way
                    await self._connected.wait()
                await self._sync(confirm=True, only=self.channel(conn.visitor))
        except (TimeoutError, RedisError, OSError) as exc:
            # The tab opens anyway: run() subscribes when Redis is back, and the history and
            # every later `done` bring what it missed meanwhile.
            log.warning(
                "web: visitor %s's channel is not subscribed yet (%r); frames reach the tab once it is",
                conn.visitor,
                exc,
            )

    def detach(self, conn: Connection) -> None:
        self._local.detach(conn)
        if not self._local.count(conn.visitor):
            self._stale = True

    def count(self, visitor: str) -> int:
        return self._local.count(visitor)

    def connections(self) -> Iterator[Connection]:
        return self._local.connections()

    # -- out --------------------------------------------------------------------------------

    async def publish(self, visitor: str, frame: str) -> int:
        """One PUBLISH; the number of replicas that received it. A failure is logged once per
        outage and loses the frame (not the answer: the dialogue manager saves it)."""
        if time.monotonic() < self._paused_until:
            return 0
        try:
            receivers = await self._redis.publish(self.channel(visitor), frame)
        except (RedisError, OSError) as exc:
            self._paused_until = time.monotonic() + PUBLISH_PAUSE
            if not self._publish_failing:
                self._publish_failing = True
                log.warning(
                    "web: cannot publish frames to Redis (%s: %s); tabs miss them (answers are "
                    "still saved, and show on reload) until it is back",
                    type(exc).__name__,
                    exc,
                )
            return 0
        if self._publish_failing:
            self._publish_failing = False
            log.info("web: publishing frames to Redis again")
        return int(receivers)

    # -- in ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe, deliver, and after a lost connection subscribe again (backing off), until cancelled."""
        failures = 0
        while True:
            pubsub = self._redis.pubsub()  # a connection of its own, out of the shared pool
            try:
                await pubsub.connect()
                self._pubsub, self._subscribed = pubsub, set()
                await self._sync()  # every visitor held here, after an outage too
                self._connected.set()
                self._recovered()
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=POLL)
                    if message is not None:
                        self._take(message)
                    if self._stale:
                        self._stale = False
                        await self._sync()
            except (RedisError, OSError) as exc:
                self._lost(exc)
                failures += 1
            finally:
                self._pubsub = None
                self._connected.clear()
                for ping in self._pings.values():
                    if not ping.done():
                        ping.set_result(False)  # never to be answered on this connection
                self._pings.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(min(0.1 * 2**failures, RECONNECT_MAX))

    def _take(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            channel = as_text(message["channel"])
            if channel.startswith(self._prefix):
                self._local.deliver(channel[len(self._prefix) :], as_text(message["data"]))
        elif kind == "pong":
            ping = self._pings.pop(as_text(message["data"]), None)
            if ping is not None and not ping.done():
                ping.set_result(True)
        # (un)subscribe confirmations: the PING after them says the same, for the one who waits

    async def _sync(self, *, confirm: bool = False, only: str | None = None) -> None:
        """Subscribe to the channels of the visitors with sockets here, drop the others; with
        `only`, just make sure that one channel is subscribed (a new socket: its cost must not
        grow with the visitors held here; run() drops the old ones). With `confirm`, wait
        until Redis has done it. Nothing while disconnected: run() does it on connecting."""
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None:
                return
            wanted = {only} if only is not None else {self._home, *(self.channel(v) for v in self._local.visitors())}
            if new := wanted - self._subscribed:
                await pubsub.subscribe(*new)
                self._subscribed |= new
            if only is None and (gone := self._subscribed - wanted):
                await pubsub.unsubscribe(*gone)
                self._subscribed -= gone
            if not confirm:
                return
            # Redis answers one connection in order: when this PING is answered, the SUBSCRIBEs
            # sent before it (by this call or an earlier one) are in force.
            token = f"parley-fanout-{next(self._ping_ids)}"
            answered = self._pings[token] = asyncio.get_running_loop().create_future()
            try:
                await pubsub.ping(token)
            except BaseException:
                self._pings.pop(token, None)
                raise
        try:
            if not await answered:
                raise RedisConnectionError("the subscription's connection was lost")
        finally:
            self._pings.pop(token, None)

    def _lost(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "web: the fan-out lost Redis (%s: %s); tabs here miss frames until it is back", type(exc).__name__, exc
            )

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.info("web: the fan-out is subscribed again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None


async def stop_relay(task: asyncio.Task[Any]) -> None:
    """Stop `RedisFanout.run`: cancelled once in the middle of an (UN)SUBSCRIBE it could go
    on for ever (`bot.store.redis.cancel_and_wait`). A relay that had failed is logged."""
    await cancel_and_wait(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("web: the fan-out's relay had failed", exc_info=task.exception())
