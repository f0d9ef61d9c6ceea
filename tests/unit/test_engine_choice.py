"""Choosing an engine: circuit breakers and conversation affinity (no network needed)."""

from collections import Counter

from bot.config import LLMSettings
from bot.llm.client import LLMClient
from bot.llm.engines import CircuitBreaker


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_the_threshold_and_half_opens_after_the_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open"
    clock.now += 9.9
    assert breaker.state == "open"
    clock.now += 0.2
    assert breaker.state == "half_open"
    breaker.failure()  # the probe failed: open for another cooldown
    assert breaker.state == "open"
    clock.now += 10
    breaker.success()
    assert breaker.state == "closed"


def test_a_success_resets_the_count():
    breaker = CircuitBreaker(threshold=2, cooldown=1, clock=Clock())
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == "closed"


def client(urls):
    return LLMClient(LLMSettings(_env_file=None, base_url=",".join(urls)))


URLS = [f"http://engine-{i}:8000/v1" for i in range(4)]


async def test_conversations_stick_to_one_engine_and_spread_over_all():
    llm = client(URLS)
    keys = [f"slack:T1:C{i}:" for i in range(400)]
    first = {k: llm._pool.order(k)[0].base_url for k in keys}
    assert first == {k: llm._pool.order(k)[0].base_url for k in keys}  # stable
    spread = Counter(first.values())
    assert set(spread) == set(URLS) and min(spread.values()) > 60
    await llm.aclose()


async def test_removing_an_engine_moves_only_its_conversations():
    before, after = client(URLS), client(URLS[:3])
    keys = [f"discord:G1:{i}:" for i in range(400)]
    for key in keys:
        old, new = before._pool.order(key)[0].base_url, after._pool.order(key)[0].base_url
        if old != URLS[3]:
            assert new == old
        else:  # its fallback is its next engine in the old order
            assert new == before._pool.order(key)[1].base_url
    await before.aclose()
    await after.aclose()


async def test_without_affinity_requests_go_round_robin():
    llm = client(URLS[:2])
    assert [llm._pool.order(None, rotate=True)[0].base_url for _ in range(4)] == [URLS[1], URLS[0], URLS[1], URLS[0]]
    assert llm._pool.order(None)[0].base_url == URLS[0]  # side requests do not move the turn
    await llm.aclose()
