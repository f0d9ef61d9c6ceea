"""The token buckets themselves, on a real Redis: refill by elapsed server time, all-or-nothing
takes, debts, two replicas on one Redis, and a Redis that stops and comes back."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.asyncio import Redis

from bot.errors import StoreUnavailable
from bot.store.quota import Limit, MemoryBuckets, RedisBuckets

# 4 turns per 2 s: one back every 0.5 s (a slower bucket would slow the tests; a faster one, on a
# loaded machine, refills a second turn while the test oversleeps)
FAST = Limit("user", "turns", 4, 2.0, "user_turns_per_minute")
TOKENS = Limit("user", "tokens", 100, 1.0, "user_tokens_per_hour")


def buckets(redis: Redis) -> RedisBuckets:
    return RedisBuckets(redis, prefix=f"q{uuid.uuid4().hex[:8]}")


async def test_a_bucket_empties_and_refills_with_time(redis):
    b = buckets(redis)
    one = b.bucket("T1", "user", "U1", FAST)
    for _ in range(4):
        assert await b.take([one], [1], [1]) is None
    refused = await b.take([one], [1], [1])
    assert refused is not None and refused.limit is FAST
    assert 0 < refused.retry_after <= 0.5  # one turn comes back every 0.5 s
    await asyncio.sleep(refused.retry_after + 0.05)
    assert await b.take([one], [1], [1]) is None  # refilled by the time it said
    assert await b.take([one], [1], [1]) is not None  # but only that one
    await asyncio.sleep(2.0)  # a whole window: full again, and never more than full
    for _ in range(4):
        assert await b.take([one], [1], [1]) is None
    assert await b.take([one], [1], [1]) is not None


async def test_a_take_is_all_or_nothing_and_names_the_bucket_that_waits_longest(redis):
    b = buckets(redis)
    user = b.bucket("T1", "user", "U1", FAST)
    tenant_limit = Limit("tenant", "turns", 2, 60.0, "tenant_turns_per_minute")
    tenant = b.bucket("T1", "tenant", "T1", tenant_limit)
    assert await b.take([user, tenant], [1, 1], [1, 1]) is None
    assert await b.take([user, tenant], [1, 1], [1, 1]) is None
    refused = await b.take([user, tenant], [1, 1], [1, 1])
    assert refused is not None and refused.limit is tenant_limit and 29 < refused.retry_after <= 30
    # The user's bucket was not charged for the refused turn: two of its four are still there.
    assert await b.take([user], [1], [1]) is None
    assert await b.take([user], [1], [1]) is None
    assert await b.take([user], [1], [1]) is not None


async def test_a_turn_that_spent_more_than_was_left_leaves_a_debt(redis):
    b = buckets(redis)
    tokens = b.bucket("T1", "user", "U1", TOKENS)
    assert await b.take([tokens], [10], [1]) is None  # a reservation of 10 from 100
    await b.settle([tokens], [140])  # the turn used 150 in all: 50 more than the bucket held
    refused = await b.take([tokens], [10], [1])
    assert refused is not None
    assert 0.45 < refused.retry_after <= 0.51  # 51 tokens at 100 a second
    await b.settle([tokens], [-1000])  # giving back never fills past the capacity
    assert await b.take([tokens], [100], [1]) is None
    assert await b.take([tokens], [1], [1]) is not None


async def test_two_replicas_share_buckets_by_the_servers_clock(redis, redis_server, monkeypatch):
    """The script reads the time with TIME on the server: a replica whose clock is an hour off
    (here: this process's clocks, patched) shares the buckets with another exactly."""
    other = Redis.from_url(redis_server.url)
    try:
        prefix = f"q{uuid.uuid4().hex[:8]}"
        one, two = RedisBuckets(redis, prefix=prefix), RedisBuckets(other, prefix=prefix)
        slow = Limit("user", "turns", 2, 60.0, "user_turns_per_minute")
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)
        monkeypatch.setattr(time, "monotonic", lambda: real() + 3600)
        assert await one.take([one.bucket("T1", "user", "U1", slow)], [1], [1]) is None
        assert await two.take([two.bucket("T1", "user", "U1", slow)], [1], [1]) is None
        refused = await one.take([one.bucket("T1", "user", "U1", slow)], [1], [1])
        assert refused is not None and 29 < refused.retry_after <= 30  # not refilled by the skewed clock
        key = one.bucket("T1", "user", "U1", slow).key
        at = int(await redis.hget(key, "at"))
        server_s, server_us = await redis.time()
        assert abs(at - (server_s * 1000 + server_us // 1000)) < 5000  # the server's time, not ours
        assert abs(at / 1000 - time.time()) > 3000
    finally:
        await other.aclose()


async def test_buckets_of_one_tenant_share_a_cluster_slot_and_expire_once_full(redis):
    b = RedisBuckets(redis, prefix="qtag")
    user = b.bucket("T{1}", "user", "U1", FAST)
    tenant = b.bucket("T{1}", "tenant", "T{1}", FAST)
    # Redis Cluster hashes the first {...} of a key: the tenant's, with its own braces made safe.
    assert user.key.split("}")[0] == tenant.key.split("}")[0] == "qtag:quota:{T(1)"
    await b.take([user], [1], [1])
    assert 0 < await redis.pttl(user.key) <= 0.5 * 1000 + 1000  # full again after 0.5 s, and a second to spare


async def test_memory_buckets_behave_the_same():
    b = MemoryBuckets()
    one = b.bucket("T1", "user", "U1", FAST)
    for _ in range(4):
        assert await b.take([one], [1], [1]) is None
    refused = await b.take([one], [1], [1])
    assert refused is not None and 0 < refused.retry_after <= 0.5
    await asyncio.sleep(refused.retry_after + 0.05)
    assert await b.take([one], [1], [1]) is None


async def test_a_stopped_redis_fails_as_store_unavailable_and_a_restarted_one_works_again(redis_to_stop):
    client = Redis.from_url(redis_to_stop.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        b = RedisBuckets(client, prefix="q")
        slow = Limit("user", "turns", 1, 60.0, "user_turns_per_minute")
        one = b.bucket("T1", "user", "U1", slow)
        assert await b.take([one], [1], [1]) is None
        redis_to_stop.stop()
        with pytest.raises(StoreUnavailable):
            await b.take([one], [1], [1])
        redis_to_stop.start()  # no persistence: the script and the buckets are gone
        await asyncio.sleep(0)
        for _ in range(10):  # the client reconnects on its next command
            try:
                assert await b.take([one], [1], [1]) is None  # loaded again (NOSCRIPT), the bucket full again
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the buckets did not work again after the restart")
        assert await b.take([one], [1], [1]) is not None
    finally:
        await client.aclose()
