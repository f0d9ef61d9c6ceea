"""Rate limits: a sliding window, the same in Redis (shared by replicas) and in memory."""

from __future__ import annotations

import uuid

import pytest

from adapters.web.limits import MemoryRateLimiter, RedisRateLimiter


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def limiter_for(request, redis):
    """`limiter_for(clock)`: each kind of limiter, on a clock the test moves."""

    def make(clock: Clock):
        if request.param == "memory":
            return MemoryRateLimiter(window=60.0, clock=clock)
        return RedisRateLimiter(redis, prefix=f"t{uuid.uuid4().hex[:8]}:web:shop", window=60.0, clock=clock)

    return make


async def test_allows_the_limit_then_refuses_with_the_time_until_a_slot_frees(limiter_for):
    clock = Clock()
    limiter = limiter_for(clock)
    for i in range(3):
        clock.now += 1
        assert await limiter.hit("visitor:a", 3) is None, f"hit {i + 1} of 3"
    clock.now += 1
    wait = await limiter.hit("visitor:a", 3)
    assert wait == pytest.approx(57.0, abs=0.01)  # the first hit, 3 s ago, leaves the window in 57 s


async def test_the_window_slides_rather_than_resetting_at_a_boundary(limiter_for):
    clock = Clock()
    limiter = limiter_for(clock)
    for t in (0.0, 20.0, 40.0):
        clock.now = 1_750_000_000.0 + t
        assert await limiter.hit("k", 3) is None
    clock.now = 1_750_000_000.0 + 59.9
    assert await limiter.hit("k", 3) is not None  # a fixed minute window would have reset by now
    clock.now = 1_750_000_000.0 + 60.1  # the hit at 0 s has left the window: one slot
    assert await limiter.hit("k", 3) is None
    assert await limiter.hit("k", 3) is not None


async def test_refused_hits_do_not_count(limiter_for):
    clock = Clock()
    limiter = limiter_for(clock)
    assert await limiter.hit("k", 1) is None
    for _ in range(50):
        clock.now += 1
        assert await limiter.hit("k", 1) is not None
    clock.now += 11  # 61 s after the only counted hit
    assert await limiter.hit("k", 1) is None


async def test_keys_are_counted_apart(limiter_for):
    limiter = limiter_for(Clock())
    assert await limiter.hit("visitor:a", 1) is None
    assert await limiter.hit("visitor:b", 1) is None
    assert await limiter.hit("ip:127.0.0.1", 1) is None
    assert await limiter.hit("visitor:a", 1) is not None


async def test_two_replicas_share_one_limit_through_redis(redis):
    clock = Clock()
    prefix = f"t{uuid.uuid4().hex[:8]}:web:shop"
    one, two = (RedisRateLimiter(redis, prefix=prefix, clock=clock) for _ in range(2))
    assert await one.hit("ip:10.0.0.1", 2) is None
    assert await two.hit("ip:10.0.0.1", 2) is None
    assert await one.hit("ip:10.0.0.1", 2) is not None
    assert await two.hit("ip:10.0.0.1", 2) is not None


async def test_redis_keys_are_namespaced_bounded_and_expire(redis):
    clock = Clock()
    prefix = f"t{uuid.uuid4().hex[:8]}:web:shop"
    limiter = RedisRateLimiter(redis, prefix=prefix, clock=clock)
    for _ in range(10):
        await limiter.hit("visitor:a", 3)
    key = limiter.key("visitor:a")
    assert key.startswith(prefix + ":rate:{")
    assert await redis.zcard(key) == 3  # refused hits are not stored: at most `limit` entries
    assert 0 < await redis.pttl(key) <= 60_000


async def test_memory_limiter_forgets_idle_keys():
    clock = Clock()
    limiter = MemoryRateLimiter(window=60.0, clock=clock, sweep_every=10)
    for i in range(9):
        await limiter.hit(f"visitor:{i}", 5)
    assert len(limiter) == 9
    clock.now += 61
    await limiter.hit("visitor:new", 5)  # the tenth hit sweeps
    assert len(limiter) == 1


async def test_hit_all_counts_every_key_or_none(limiter_for):
    clock = Clock()
    limiter = limiter_for(clock)
    assert await limiter.hit_all([("visitor:a", 2), ("ip:x", 3), ("site:s", 5)]) is None
    assert await limiter.hit_all([("visitor:b", 2), ("ip:x", 3), ("site:s", 5)]) is None
    assert await limiter.hit_all([("visitor:c", 2), ("ip:x", 3), ("site:s", 5)]) is None
    clock.now += 1
    key, wait = await limiter.hit_all([("visitor:d", 2), ("ip:x", 3), ("site:s", 5)])
    assert key == "ip:x" and wait == pytest.approx(59.0, abs=0.01)
    # The refusal counted nothing: visitor:d still has both its slots, site:s two of five.
    assert await limiter.hit_all([("visitor:d", 2), ("site:s", 5)]) is None
    assert await limiter.hit_all([("visitor:d", 2), ("site:s", 5)]) is None
    assert (await limiter.hit_all([("visitor:d", 2), ("site:s", 5)]))[0] == "visitor:d"


async def test_a_slot_keeps_every_key_of_a_limiter_in_one_cluster_slot(redis):
    prefix = f"t{uuid.uuid4().hex[:8]}:web:shop:handoff"
    limiter = RedisRateLimiter(redis, prefix=prefix, slot="handoff")
    assert {limiter.key(k).split("{")[1].split("}")[0] for k in ("visitor:a", "ip:1.2.3.4", "site:s")} == {"handoff"}
    assert await limiter.hit_all([("visitor:a", 1), ("ip:1.2.3.4", 1), ("site:s", 1)]) is None
    assert await redis.zcard(limiter.key("ip:1.2.3.4")) == 1
