"""The Redis Stream inbox against a real redis-server: order across workers, takeover, fencing, bounds."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.config import DialogueSettings
from bot.engine.launcher import free_port
from bot.errors import InboxClosed, InboxFull, InboxUnavailable
from bot.store.inbox import GROUP, RedisInbox
from bot.turns import Turn
from tests.conftest import RedisServer


def turn(event: str, channel: str = "C1", text: str = "hello") -> Turn:
    return Turn(platform="test", tenant="T", channel=channel, user="U", text=text, event_id=event)


def inbox(redis, prefix: str, name: str, *, shards: int = 1, size: int = 100, visibility: float = 30.0) -> RedisInbox:
    settings = DialogueSettings(
        _env_file=None, stream_shards=shards, inbox_size=size, visibility_timeout=visibility, consumer=name
    )
    return RedisInbox(redis, settings, prefix=prefix, ttl=600, order_timeout=30.0, platforms=["test"])


@pytest.fixture
def prefix() -> str:
    return f"i{uuid.uuid4().hex[:8]}"


async def two(redis, prefix: str, names: tuple[str, str], *, visibility: float = 30.0):
    """Two workers of one group, each with its upkeep running."""
    boxes = [inbox(redis, prefix, name, visibility=visibility) for name in names]
    return boxes, [await started(box) for box in boxes]


async def started(box: RedisInbox) -> asyncio.Task[None]:
    task = asyncio.create_task(box.maintain())
    await asyncio.sleep(0.05)  # the consumer group exists
    return task


async def stop(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_turns_of_one_conversation_wait_for_each_other_across_workers(redis, prefix):
    (a, b), upkeep = await two(redis, prefix, ("a", "b"))
    try:
        for i in (1, 2, 3):
            await a.put(turn(f"e{i}"))
        first, second = await a.get(), await b.get()
        assert (first.turn.seq, second.turn.seq) == (1, 2)
        assert await a.in_order(first)
        waiting = asyncio.create_task(b.in_order(second))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "turn 2 started before turn 1 was finished"
        await a.done(first)
        assert await asyncio.wait_for(waiting, 5)
        await b.done(second)
        third = await a.get()
        assert third.turn.seq == 3 and await a.in_order(third)
        await a.done(third)
        assert await redis.xlen(f"{prefix}:inbox:{{test:0}}") == 0  # finished entries leave the stream
        assert a.pending == b.pending == 0
    finally:
        await stop(*upkeep)


async def test_a_stopped_workers_turn_is_taken_over_with_its_posted_messages(redis, prefix):
    dead, alive = inbox(redis, prefix, "dead", visibility=0.5), inbox(redis, prefix, "alive", visibility=0.5)
    dead_upkeep = await started(dead)
    await dead.put(turn("e1"))
    taken = await dead.get()
    await dead.journal(taken).record(["1700000000.000100"])  # it had posted the start of its answer
    await stop(dead_upkeep)  # the process dies: no more heartbeats, no done
    upkeep = await started(alive)
    try:
        reclaimed = await asyncio.wait_for(alive.get(), 10)
        assert reclaimed.reclaimed and reclaimed.entry == taken.entry
        assert reclaimed.posted == ("1700000000.000100",)
        assert await alive.in_order(reclaimed)
        # The dead worker's late `done` is fenced off: the entry is the other worker's now.
        await dead.done(taken)
        assert (await redis.xpending(f"{prefix}:inbox:{{test:0}}", GROUP))["pending"] == 1
        await alive.done(reclaimed)
        assert (await redis.xpending(f"{prefix}:inbox:{{test:0}}", GROUP))["pending"] == 0
    finally:
        await stop(upkeep)


async def test_a_live_workers_turn_is_not_taken_over(redis, prefix):
    (slow, other), upkeep = await two(redis, prefix, ("slow", "other"), visibility=0.4)
    try:
        await slow.put(turn("e1"))
        held = await slow.get()
        await asyncio.sleep(1.5)  # several visibility timeouts; the heartbeat keeps it
        assert other.pending == 0
        await slow.done(held)
    finally:
        await stop(*upkeep)


async def test_a_turn_finished_but_not_acknowledged_is_recognised(redis, prefix):
    a = inbox(redis, prefix, "a")
    upkeep = await started(a)
    try:
        await a.put(turn("e1"))
        await a.put(turn("e2"))
        first = await a.get()
        await a.done(first)
        second = await a.get()
        # The same entry handed out again (as after a takeover) when turn 2 is already done.
        await a.done(second)
        assert not await a.in_order(dataclasses.replace(second, reclaimed=True))
    finally:
        await stop(upkeep)


async def test_a_full_shard_refuses_at_once_and_a_refused_turn_takes_no_number(redis, prefix):
    a = inbox(redis, prefix, "a", size=2)
    upkeep = await started(a)
    try:
        await a.put(turn("e1"))
        await a.put(turn("e2"))
        with pytest.raises(InboxFull):
            await a.put(turn("e3"))
        first = await a.get()
        await a.done(first)
        await a.put(turn("e4"))  # room again; it is the conversation's third turn, not its fourth
        seqs = [(await a.get()).turn.seq for _ in range(2)]
        assert seqs == [2, 3]
    finally:
        await stop(upkeep)


async def test_close_hands_unstarted_turns_to_the_other_workers(redis, prefix):
    (leaving, staying), upkeep = await two(redis, prefix, ("leaving", "staying"), visibility=5)
    try:
        await leaving.put(turn("e1", channel="C1"))
        await leaving.put(turn("e2", channel="C2"))
        await leaving.get()
        await leaving.close()
        with pytest.raises(InboxClosed):
            await leaving.get()
        await leaving.release()
        # Marked idle for the whole visibility timeout: taken at the other worker's next look, not 5 s later.
        got = {(await asyncio.wait_for(staying.get(), 4)).turn.event_id for _ in range(2)}
        assert got == {"e1", "e2"}
    finally:
        await stop(*upkeep)


async def test_an_unreachable_redis_is_a_typed_error_not_a_crash(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    client = Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        box = inbox(client, "down", "a")
        await box.put(turn("e1"))
        server.stop()
        with pytest.raises(InboxUnavailable):
            await box.put(turn("e2"))
    finally:
        await client.aclose()
        server.stop()


async def test_entries_with_the_same_id_in_two_shards_are_two_turns(redis, prefix):
    """Stream ids are unique per stream only: two shards can each hold `5-1`."""
    a = inbox(redis, prefix, "a", shards=2, visibility=0.4)
    upkeep = await started(a)
    try:
        for shard, channel in enumerate(("C1", "C2")):
            fields = {"turn": json.dumps(turn(f"e{shard}", channel=channel).to_dict()), "seq": 1}
            await redis.xadd(f"{prefix}:inbox:{{test:{shard}}}", fields, id="5-1")
        got = [await asyncio.wait_for(a.get(), 5) for _ in range(2)]
        assert {d.turn.event_id for d in got} == {"e0", "e1"} and a.pending == 2
        await asyncio.sleep(1.2)  # both kept by the heartbeat, neither taken back as a stranger's
        assert a.pending == 2
        for delivery in got:
            await a.done(delivery)
        assert a.pending == 0
        assert [(await redis.xpending(f"{prefix}:inbox:{{test:{s}}}", GROUP))["pending"] for s in (0, 1)] == [0, 0]
    finally:
        await stop(upkeep)


async def test_a_worker_reads_only_the_platforms_it_answers_for(redis, prefix):
    settings = DialogueSettings(_env_file=None, stream_shards=2, consumer="x")
    web_only = RedisInbox(redis, settings, prefix=prefix, ttl=600, order_timeout=30.0, platforms=["web"])
    slack_only = RedisInbox(
        redis,
        settings.model_copy(update={"consumer": "y"}),
        prefix=prefix,
        ttl=600,
        order_timeout=30.0,
        platforms=["slack"],
    )
    upkeep = [await started(web_only), await started(slack_only)]
    try:
        # A Slack replica puts a turn for a web visitor (an agent's reply): only the web worker gets it.
        await slack_only.put(Turn(platform="web", tenant="site", channel="v1", user="agent", text="hi", event_id="a1"))
        got = await asyncio.wait_for(web_only.get(), 5)
        assert got.turn.platform == "web"
        reading = asyncio.create_task(slack_only.get())
        await asyncio.sleep(1.5)
        assert not reading.done()
        reading.cancel()
        await web_only.done(got)
    finally:
        await stop(*upkeep)


async def test_a_read_only_replica_is_an_outage_not_a_crash(tmp_path, redis_server, prefix):
    """During a Sentinel failover a worker can talk to a node that is a replica for a while:
    every write answers READONLY. Workers wait it out; intake gets the typed error."""
    port = free_port()
    replica = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--replicaof",
            "127.0.0.1",
            str(redis_server.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = Redis(port=port, socket_timeout=2)
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    if await client.ping():
                        break
                except RedisError:
                    await asyncio.sleep(0.05)
        box = inbox(client, prefix, "a")
        upkeep = asyncio.create_task(box.maintain())
        reading = asyncio.create_task(box.get())
        await asyncio.sleep(1.5)
        assert not upkeep.done() and not reading.done(), "a READONLY answer must not end the worker"
        with pytest.raises(InboxUnavailable):
            await box.put(turn("e1"))
        await stop(upkeep, reading)
    finally:
        await client.aclose()
        replica.terminate()
        replica.wait(10)


async def test_numbering_that_starts_again_never_takes_a_turn_for_finished(redis, prefix):
    # The conversation's counters expire together (one hash), and a turn whose number is at or
    # below the last one finished is answered, not dropped: only its own id says it finished.
    a = inbox(redis, prefix, "a")
    upkeep = await started(a)
    try:
        for i in (1, 2, 3):
            await a.put(turn(f"e{i}"))
            delivery = await a.get()
            assert await a.in_order(delivery)
            await a.done(delivery)
        [counters] = [k async for k in redis.scan_iter(f"{prefix}:inbox:*:conv:*")]
        assert await redis.hgetall(counters) == {b"seq": b"3", b"done": b"3", b"uid": delivery.turn.uid.encode()}
        assert 0 < await redis.ttl(counters) <= 600
        await redis.hdel(counters, "seq")  # numbering lost (a failover), the finished mark kept
        await a.put(turn("e4"))
        fourth = await a.get()
        assert fourth.turn.seq == 1 and fourth.turn.uid != delivery.turn.uid
        assert await a.in_order(fourth)
        await a.done(fourth)
        assert await redis.hget(counters, "done") == b"1"  # the stale mark gave way to the new numbering
    finally:
        await stop(upkeep)
