"""Commands issued together go to Redis in one round trip, and each caller gets its own replies
or its own error (real redis-server)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from bot.config import ContextSettings, RedisSettings
from bot.store.batching import RedisBatcher
from bot.store.context import Message, RedisContextStore
from bot.store.dedupe import RedisDeduper
from bot.turns import ConversationKey, Turn


async def connections_named(redis: Redis, name: str) -> int:
    return sum(1 for client in await redis.client_list() if client["name"] == name)


async def test_claims_and_loads_issued_together_share_one_connection_and_each_gets_its_own_answer(redis_server, redis):
    name = f"batch-{uuid.uuid4().hex[:8]}"
    client = Redis.from_url(redis_server.url, client_name=name)
    settings = RedisSettings(_env_file=None, prefix=name)
    batcher = RedisBatcher(client)
    store = RedisContextStore(
        client, redis_settings=settings, settings=ContextSettings(_env_file=None), batcher=batcher
    )
    deduper = RedisDeduper(client, settings, batcher=batcher)
    keys = [ConversationKey("test", "t", f"c{n}", "") for n in range(16)]
    try:
        empty = await asyncio.gather(*(store.load(key) for key in keys))
        await asyncio.gather(
            *(
                store.save(key, context, [Message("user", str(key), 1)])
                for key, context in zip(keys, empty, strict=True)
            )
        )
        turns = [
            Turn(platform="test", tenant="t", channel=key.channel, user="u", text="hi", event_id=f"e{n}")
            for n, key in enumerate(keys)
        ]
        results = await asyncio.gather(
            *(asyncio.gather(deduper.claim(t), store.load(k)) for t, k in zip(turns, keys, strict=True))
        )
        assert [won for won, _ in results] == [True] * 16
        assert [[m.content for m in context.messages] for _, context in results] == [[str(key)] for key in keys]
        # 32 commands from 16 turns at once, and never a second connection.
        assert await connections_named(redis, name) == 1
        assert await asyncio.gather(*(deduper.claim(t) for t in turns)) == [False] * 16  # retries
    finally:
        await batcher.aclose()
        await client.aclose()


async def test_a_failing_command_fails_only_its_caller(redis):
    batcher = RedisBatcher(redis)
    key = f"batch-{uuid.uuid4().hex[:8]}"
    await redis.set(key, "text")
    good, bad = await asyncio.gather(
        batcher.execute(("GET", key)), batcher.execute(("LRANGE", key, 0, -1)), return_exceptions=True
    )
    assert good == [b"text"]
    assert isinstance(bad, ResponseError) and "WRONGTYPE" in str(bad)


async def test_a_cancelled_caller_leaves_the_others_their_replies(redis):
    batcher = RedisBatcher(redis)
    key = f"batch-{uuid.uuid4().hex[:8]}"
    await redis.set(key, "1")
    gone = asyncio.create_task(batcher.execute(("INCR", key)))
    kept = asyncio.create_task(batcher.execute(("GET", key)))
    await asyncio.sleep(0)  # both queued
    gone.cancel()
    assert await kept == [b"2"]  # the same round trip: the INCR, which was queued first, went out too
    with pytest.raises(asyncio.CancelledError):
        await gone
    await batcher.aclose()
    assert await redis.get(key) == b"2"  # a command already queued is sent, as a call already written would be


async def test_a_lost_connection_fails_every_caller_of_that_round_trip(redis_to_stop):
    client = Redis.from_url(redis_to_stop.url, socket_timeout=1, socket_connect_timeout=1)
    batcher = RedisBatcher(client)
    try:
        await batcher.execute(("PING",))
        redis_to_stop.stop()
        results = await asyncio.gather(*(batcher.execute(("GET", f"k{n}")) for n in range(5)), return_exceptions=True)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        redis_to_stop.start()
        assert await batcher.execute(("PING",)) == [True]  # and the next round trip reconnects
    finally:
        await batcher.aclose()
        await client.aclose()
