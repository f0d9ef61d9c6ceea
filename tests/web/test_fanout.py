"""The per-visitor fan-out and a socket's bounded outbox: the rules in process, then the Redis
pub/sub fan-out between replicas on a real redis-server (two instances, as two replicas would)."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from redis.asyncio import Redis

from adapters.web.fanout import Connection, Fanout, LocalFanout, RedisFanout, stop_relay

FRAME_TIMEOUT = 30.0  # generous on two shared cores; never a timing assertion


def conn(visitor: str, *, limit: int = 4) -> Connection:
    return Connection(web.WebSocketResponse(), visitor, limit=limit)


def tab(visitor: str) -> Connection:
    """A socket past its welcome, with room for every frame a test sends."""
    c = conn(visitor, limit=10_000)
    c.open("welcome")
    queued(c)
    return c


def queued(c: Connection) -> list[str | None]:
    frames = []
    while not c._outbox.empty():
        frames.append(c._outbox.get_nowait())
    return frames


async def received(c: Connection, until: str) -> list[str]:
    """The frames that reach `c` before `until` (which a test publishes last: pub/sub keeps one
    publisher's order, so anything sent twice would show up before it)."""
    frames = []
    async with asyncio.timeout(FRAME_TIMEOUT):
        while (frame := await c._outbox.get()) != until:
            frames.append(frame)
    return frames


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(FRAME_TIMEOUT):
        while not await check():
            await asyncio.sleep(0.02)


async def subscribers(redis: Redis, channel: str) -> int:
    return (await redis.pubsub_numsub(channel))[0][1]


@asynccontextmanager
async def replica(url: str, prefix: str) -> AsyncIterator[RedisFanout]:
    """One replica's fan-out: its own Redis client, subscribed until the block ends."""
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    fanout = RedisFanout(client, prefix=prefix)
    relay = asyncio.create_task(fanout.run())
    try:
        yield fanout
    finally:
        await stop_relay(relay)
        await client.aclose()


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:web:shop"


# -- in one process --------------------------------------------------------------------------


async def test_frames_published_before_the_welcome_follow_it():
    c = conn("v1")
    assert c.push("delta-1") and c.push("done-1")  # an answer streaming while the history loads
    assert queued(c) == []
    c.open("welcome")
    assert queued(c) == ["welcome", "delta-1", "done-1"]
    c.push("next")
    assert queued(c) == ["next"]


async def test_a_tab_that_falls_behind_is_closed_not_buffered_without_end():
    c = conn("v1", limit=3)
    c.open("welcome")
    assert all(c.push(f"frame-{i}") for i in range(2))
    assert not c.push("one too many")
    assert c.overflowed and queued(c) == [None]  # only the signal to close is left
    assert not c.push("after")


async def test_publish_reaches_every_tab_of_the_visitor_and_no_one_else():
    fanout = LocalFanout()
    a1, a2, b = conn("a"), conn("a"), conn("b")
    for c in (a1, a2, b):
        await fanout.attach(c)
        c.open("welcome")
        queued(c)
    assert await fanout.publish("a", "frame") == 2
    assert queued(a1) == queued(a2) == ["frame"] and queued(b) == []
    assert await fanout.publish("nobody", "frame") == 0
    fanout.detach(a1)
    assert fanout.count("a") == 1 and await fanout.publish("a", "again") == 1
    fanout.detach(a2)
    fanout.detach(a2)  # twice is harmless
    assert fanout.count("a") == 0 and list(fanout.connections()) == [b]


# -- between replicas, through Redis ---------------------------------------------------------


async def test_a_replica_is_subscribed_exactly_while_it_holds_a_tab_of_the_visitor(redis_server, redis):
    prefix = new_prefix()
    async with replica(redis_server.url, prefix) as a, replica(redis_server.url, prefix) as b:
        channel = a.channel("v")
        assert channel == f"{prefix}:visitor:v"
        assert await subscribers(redis, channel) == 0
        a1, a2, b1 = tab("v"), tab("v"), tab("v")
        await a.attach(a1)
        assert await subscribers(redis, channel) == 1  # attach returns once Redis has subscribed
        await a.attach(a2)
        assert await subscribers(redis, channel) == 1  # one subscription a replica, not one a tab
        await b.attach(b1)
        assert await subscribers(redis, channel) == 2
        assert await b.publish("v", "to all three") == 2  # replicas reached
        for c in (a1, a2, b1):
            assert await received(c, until="to all three") == []
        # A's last tab leaves: A stops listening; B, still holding one, does not.
        a.detach(a1)
        a.detach(a2)
        await eventually(lambda: _equals(subscribers(redis, channel), 1))
        assert await a.publish("v", "to b1") == 1
        assert await received(b1, until="to b1") == [] and queued(a1) == queued(a2) == []
        # A tab that leaves and one that comes straight back: subscribed throughout, or again.
        a3 = tab("v")
        await a.attach(a3)
        a.detach(a3)
        await a.attach(a3)
        assert await b.publish("v", "back on a") == 2
        assert await received(a3, until="back on a") == []
        a.detach(a3)
        b.detach(b1)
        await eventually(lambda: _equals(subscribers(redis, channel), 0))
        assert await a.publish("v", "to no one") == 0


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_tabs_on_two_replicas_get_each_frame_once_and_in_order(redis_server):
    prefix = new_prefix()
    async with replica(redis_server.url, prefix) as a, replica(redis_server.url, prefix) as b:
        tabs = {"a1": tab("v"), "a2": tab("v"), "b1": tab("v")}
        stranger = tab("w")
        for name, c in tabs.items():
            await (a if name.startswith("a") else b).attach(c)
        await b.attach(stranger)
        frames = [f'{{"type":"delta","id":"v:m","at":{i},"text":"x"}}' for i in range(300)]
        # Published as a sink does, one after another, from the replica that also holds two tabs.
        for frame in frames:
            await a.publish("v", frame)
        await a.publish("v", "end")
        for name, c in tabs.items():
            assert await received(c, until="end") == frames, name
        await b.publish("w", "end")
        assert await received(stranger, until="end") == []


async def test_the_pub_sub_hop_latency(redis_server, capsys):
    """Not a timing assertion: prints what the Redis hop adds per frame (publish called -> the frame
    in the tab's outbox), beside the in-process fan-out it replaces."""
    prefix, n = new_prefix(), 500

    async def hop(publisher: Fanout, c: Connection) -> list[float]:
        seconds = []
        for i in range(n):
            started = time.perf_counter()
            await publisher.publish("v", f"frame-{i}")
            assert await asyncio.wait_for(c._outbox.get(), FRAME_TIMEOUT) == f"frame-{i}"
            seconds.append(time.perf_counter() - started)
        return seconds

    local = LocalFanout()
    local_tab = tab("v")
    await local.attach(local_tab)
    measured = {"in process (LocalFanout)": await hop(local, local_tab)}
    async with replica(redis_server.url, prefix) as a, replica(redis_server.url, prefix) as b:
        here = tab("v")
        await a.attach(here)
        measured["Redis, publisher holds the tab"] = await hop(a, here)
        measured["Redis, tab on the other replica"] = await hop(b, here)
    with capsys.disabled():
        print(f"\nweb fan-out, one frame, {n} frames each (loopback redis-server):")
        for name, seconds in measured.items():
            ms = sorted(s * 1000 for s in seconds)
            print(
                f"  {name:34} median {statistics.median(ms):.3f} ms, p90 {ms[int(n * 0.9)]:.3f} ms, max {ms[-1]:.3f} ms"
            )


async def test_a_replica_subscribes_again_after_redis_restarts_and_a_failed_publish_is_said_once(redis_to_stop, caplog):
    prefix = new_prefix()
    async with replica(redis_to_stop.url, prefix) as a, replica(redis_to_stop.url, prefix) as b:
        here = tab("v")
        await a.attach(here)
        assert await b.publish("v", "before") == 1
        assert await received(here, until="before") == []
        caplog.set_level(logging.INFO, logger="adapters.web.fanout")
        redis_to_stop.stop()
        for i in range(5):  # an answer streaming on: frames lost, the turn goes on
            assert await b.publish("v", f"lost-{i}") == 0
        said = [r for r in caplog.records if "cannot publish" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.WARNING
        redis_to_stop.start()  # the same port, and no subscriptions: A must make its own again
        async with asyncio.timeout(FRAME_TIMEOUT * 2):
            while await b.publish("v", "after") == 0:
                await asyncio.sleep(0.05)
        assert await received(here, until="after") == []
        assert any("publishing frames to Redis again" in r.getMessage() for r in caplog.records)
